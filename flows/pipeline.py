"""The nano3 Prefect flow: every stage through the one generic task, in dependency order."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.settings import WandbConfig
from flows.detached import check_detachable, submit_jobs
from flows.promotion import gate_stage, gated
from flows.run_options import RunOptions, take_resolved
from tasks.artifacts import ArtifactStore, ArtifactVersion, open_store
from tasks.job_config import JobConfig
from tasks.stage_task import StageResult, prepare_stage, run_prepared_stage
from tasks.stages import STAGES, STAGES_BY_ID


@flow(name="nano3", log_prints=False)
def nano3_pipeline(
    config: str = "tiny",
    run: str | None = None,
    batch: str | None = None,
    stages: list[str] | None = None,
    overrides: list[str] | None = None,
) -> list[StageResult]:
    """Data prep → pretrain → SFT → RL → convert → eval, each stage cached by its inputs and config."""
    logger = get_run_logger()
    options = RunOptions(config=config, run=run, batch=batch, overrides=tuple(overrides or ()))
    selected = [STAGES_BY_ID[s] for s in stages] if stages else list(STAGES)
    resolved = take_resolved(options, selected)
    context, jobs = resolved.context, list(resolved.jobs)
    store = open_store(context.artifacts)
    logger.info(f"profile {context.profile.name} ({context.profile.origin}), config {config}, store {store.root}")
    if options.detached:
        # A scheduled run with `batch` submits what can start and returns; the next run (or
        # `nemotron nano3 pipe -b` again) publishes what finished and submits what follows.
        check_detachable(context)
        return submit_jobs(jobs, store, context.wandb)  # type: ignore[return-value]
    results = execute_stages(jobs, store, context.wandb)
    for index, (job, result) in enumerate(zip(jobs, results)):
        if gated(job):
            verdict = gate_stage(job, result.artifact, result.inputs, store, context.wandb)
            results[index] = result.model_copy(update={"gate": verdict})
    return results


def execute_stages(
    jobs: list[JobConfig], store: ArtifactStore, wandb: WandbConfig | None
) -> list[StageResult]:
    """Run the jobs in order inside the current flow; each consumes what the previous ones made."""
    from tasks.lineage import publish_run_lineage

    say = get_run_logger().info
    produced: dict[str, ArtifactVersion] = {}
    results: list[StageResult] = []
    for job in jobs:
        result = run_prepared_stage(prepare_stage(job, store, produced, say=say), store, wandb)
        produced[result.artifact.name] = result.artifact
        results.append(result)
    publish_run_lineage([(r.stage, r.artifact, r.inputs) for r in results])
    return results

"""The promotion gate as a Prefect task, after eval, in attached and detached runs alike (tasks.gate)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.settings import WandbConfig
from tasks.artifacts import ArtifactStore, ArtifactVersion
from tasks.job_config import JobConfig


def gated(job: JobConfig) -> bool:
    """A job whose config sets `run.gate` is followed by the gate (check_inputs allows it only on a
    stage that measures the model in service)."""
    from tasks.gate import gate_config

    return gate_config(job.recipe_config.get("run"), str(job.config_file)) is not None


@task(name="gate", cache_policy=NO_CACHE)
def gate_stage(job: JobConfig, evaluation: ArtifactVersion, inputs: dict[str, ArtifactVersion], store: ArtifactStore,
               wandb: WandbConfig | None) -> str:
    """Promote or reject the eval's candidate; say so in an artifact, and the first time in an event.
    Returns the verdict in one line, for the run's summary."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.gate import ARTIFACT_KEY, emit_decision, gate_config, markdown, record_decision, run_gate

    logger = get_run_logger()
    gate = gate_config(job.recipe_config.get("run"), str(job.config_file))
    assert gate is not None, "called for a gated job only"
    decision, move = run_gate(gate, evaluation, inputs, store, say=logger.info)
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown(decision), description="nano3 evaluation gate")
    candidate = inputs["model"]
    summary = f"{decision.verdict}: {decision.reason}"
    if move is not None:
        summary += f"; production: {move.previous or 'none'} -> {move.version}"
    if decision.verdict != "in_service" and not record_decision(store, decision, evaluation, candidate.name):
        logger.info(f"gate: the same decision was made before on {evaluation.ref}; no new event")
        return summary
    emit_decision(decision, candidate.name)
    if move is not None:
        from tasks.lineage import mirror_to_wandb
        from tasks.stage_task import store_wandb_dir

        mirror_to_wandb(wandb, "promote", candidate, {"eval": evaluation}, store_wandb_dir(store), aliases=(move.alias,))
    return summary

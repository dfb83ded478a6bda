"""`--batch`: submit each stage whose inputs exist, record it, and return without waiting.

A detached job has nobody waiting to start the next stage, so a stage whose input comes from a
stage submitted in the same call is left `waiting`. Calling the command again later publishes
what finished (verified, like a cached stage), reports what still runs, and submits what became
possible: the submission records in the store make sure no job is submitted twice.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel

from blocks.errors import ConfigError
from blocks.settings import WandbConfig
from flows.promotion import gate_stage, gated
from flows.run_options import RunContext, RunOptions, input_refs, take_resolved
from tasks.artifacts import ArtifactStore, ArtifactVersion, open_store
from tasks.job_config import COMMAND_LINE, JobConfig
from tasks.stages import STAGES_BY_ID


class Submission(BaseModel):
    stage: str
    status: Literal["submitted", "running", "done", "waiting"]
    experiment_id: str | None = None
    job_id: str | None = None
    detail: str = ""


def check_detachable(context: RunContext) -> None:
    """A local job is a child of this process (NeMo-Run's local scheduler): it cannot outlive it."""
    if not context.profile.profile.job_outlives_submitter:
        raise ConfigError(
            f"--batch needs a scheduler that keeps the job after this command ends; profile "
            f"'{context.profile.name}' runs jobs on this machine",
            file=COMMAND_LINE,
            key="--batch",
            hint="use --run, or no option, to run here and wait",
        )


def submit_jobs(jobs: list[JobConfig], store: ArtifactStore, wandb: WandbConfig | None) -> list[Submission]:
    """One pass over the stages in order: publish the finished, report the running, submit the ready.

    A stage is prepared, published and submitted by the same functions as an attached run's
    (tasks.stage_task), so its job gets the same env and secrets; only the mode differs.
    """
    from tasks.lineage import publish_run_lineage
    from tasks.stage_task import prepare_stage, run_prepared_stage, submit_stage
    from tasks.submissions import is_active

    logger = get_run_logger()
    produced: dict[str, ArtifactVersion] = {}
    published: list[tuple[str, ArtifactVersion, dict[str, ArtifactVersion]]] = []
    unfinished: dict[str, str] = {}  # artifact name → the stage that will publish it
    results: list[Submission] = []
    for job in jobs:
        stage = job.stage
        blocked = [item.artifact for item in input_refs(job) if item.follows_run and item.artifact in unfinished]
        if blocked:
            results.append(Submission(stage=stage.id, status="waiting", detail=f"needs {blocked[0]} from {unfinished[blocked[0]]}"))
            unfinished[stage.artifact] = stage.id
            continue
        prepared = prepare_stage(job, store, produced, say=logger.info)
        if store.read_manifest(prepared.output_url) is not None:
            result = run_prepared_stage(prepared, store, wandb)  # verifies and publishes; submits nothing
            produced[result.artifact.name] = result.artifact
            detail = result.artifact.ref
            if gated(job):  # as an attached run does once eval is done
                detail += "; gate " + gate_stage(job, result.artifact, result.inputs, store, wandb)
            published.append((result.stage, result.artifact, result.inputs))
            results.append(Submission(stage=stage.id, status="done", detail=detail))
            continue
        unfinished[stage.artifact] = stage.id
        record = store.read_record(prepared.cache_key)
        if record is not None and is_active(record):
            results.append(Submission(stage=stage.id, status="running", experiment_id=record.experiment_id, job_id=record.job_id))
            continue
        outcome = submit_stage(prepared, store, wandb, detached=True, on_line=logger.info)
        results.append(
            Submission(
                stage=stage.id,
                status="running" if outcome.reattached else "submitted",
                experiment_id=outcome.experiment_id,
                job_id=outcome.job_id,
                detail=outcome.state,
            )
        )
    if published:
        publish_run_lineage(published)
    return results


@flow(name="nano3-submit", log_prints=False)
def submit_flow(config: str, batch: str, stages: list[str], overrides: list[str]) -> list[Submission]:
    """The detached counterpart of the nano3 flow: submits and returns."""
    options = RunOptions(config=config, batch=batch, overrides=tuple(overrides))
    selected = [STAGES_BY_ID[s] for s in stages]
    resolved = take_resolved(options, selected)
    context = resolved.context
    check_detachable(context)
    jobs = list(resolved.jobs)
    return submit_jobs(jobs, open_store(context.artifacts), context.wandb)

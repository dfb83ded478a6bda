"""The one generic Prefect task every stage runs: submit recipe → wait → read manifest → publish.

Caching: the stage's cache key (tasks.cache_key) plus its output's location is Prefect's cache
key, known before the job runs, so the first run's result is recorded under it and a rerun shows
as Cached and does no work; a stage whose output is gone runs again (run_prepared_stage).
A stage whose job fails is retried by Prefect with backoff; the recipe resumes from its own
checkpoints because a retry reuses the same work folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import OmegaConf
from prefect import Task, get_run_logger, task
from prefect.cache_policies import CachePolicy
from prefect.futures import PrefectFuture
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from blocks.settings import WandbConfig
from recipes.nano3.runtime import PROGRESS_PREFIX
from tasks.artifacts import NO_SPACE, ArtifactError, ArtifactStore, ArtifactVersion, StoreFull, no_space_left
from tasks.cache_key import compute_cache_key
from tasks.job_config import JobConfig
from tasks.refs import follows_run, ref_name
from tasks.submit import JobOutcome, submit_and_wait


#: Jobs one stage may chain when each reaches the scheduler's time limit (each resumes the last).
MAX_CHAINED_JOBS = 50


class StageFailed(Exception):
    """The job ended without a manifest: the stage did not finish, whatever its exit code."""


class StageResult(BaseModel):
    stage: str
    status: Literal["ran", "cached", "reattached"]
    seconds: float
    artifact: ArtifactVersion
    inputs: dict[str, ArtifactVersion]
    #: What the promotion gate made of an eval's output (flows.promotion), one line.
    gate: str | None = None


@dataclass(frozen=True)
class PreparedStage:
    """A job config with its inputs resolved to artifact versions and its cache key computed."""

    job: JobConfig
    cache_key: str
    inputs: dict[str, ArtifactVersion]
    output_url: str
    work_url: str
    resolved_yaml: str

    @property
    def stage_id(self) -> str:
        return self.job.stage.id


def resolve_inputs(
    job: JobConfig, store: ArtifactStore, produced: dict[str, ArtifactVersion], say: Callable[[str], None] = print
) -> dict[str, ArtifactVersion]:
    """The artifact version of each input the config's `run:` block names; those made earlier in
    this run win over `latest`. An optional input (Stage.optional) that names nothing yet (an
    alias nobody has set), or the same content as another input, is left out, and `say` says so;
    one of Stage.required_if_set is left out only where the config does not name it."""
    inputs: dict[str, ArtifactVersion] = {}
    run_block = job.recipe_config.get("run") or {}
    for name, kind in job.stage.consumes:
        ref = str(run_block.get(name) or "")
        if not ref:
            if name in job.stage.optional:
                continue
            raise ArtifactError(f"stage {job.stage.id}: config {job.config_file} sets no run.{name} ({kind} input)")
        optional = job.stage.may_be_absent(name)
        made_here = produced.get(ref_name(ref)) if follows_run(ref) else None
        if made_here:
            found: ArtifactVersion | None = made_here
        else:
            found = store.find(ref, expected_type=kind) if optional else store.resolve(ref, expected_type=kind)
        if found is None:
            say(f"{job.stage.id}: input {name} ({ref}) names nothing yet; the stage runs without it")
            continue
        if found.type != kind:
            raise ArtifactError(f"artifact {found.ref} is of type {found.type}, stage {job.stage.id} needs {kind}")
        twin = next((other for other, known in inputs.items() if known.digest == found.digest), None)
        if optional and twin is not None:
            say(f"{job.stage.id}: input {name} ({found.ref}) is the same as input {twin}; the stage runs without it")
            continue
        inputs[name] = found
    return inputs


def prepare_stage(
    job: JobConfig, store: ArtifactStore, produced: dict[str, ArtifactVersion], say: Callable[[str], None] = print
) -> PreparedStage:
    """Inputs resolved, data sources snapshotted (filled first where empty, tasks.data_sources),
    the cache key computed over both, and the config the job gets."""
    from tasks import data_sources

    config = OmegaConf.to_container(job.recipe_config, resolve=True)
    assert isinstance(config, dict)
    run_block: dict[str, Any] = dict(config.get("run") or {})
    inputs = resolve_inputs(job, store, produced, say)
    digests = {name: version.digest for name, version in inputs.items()}
    snapshots = {}
    for source in data_sources.data_sources(job, store):
        snapshot = data_sources.take(source, store, say=say)
        say(f"{job.stage.id}: data source {source.section}: {source.url}: {snapshot.describe()}")
        snapshots[source.section] = snapshot.model_dump()
        digests[f"source:{source.section}"] = snapshot.digest
    key = compute_cache_key(job.stage, config, digests)
    output_url = store.output_url(job.stage.slug, key)
    work_url = store.work_url(job.stage.slug, key)
    for name in set(job.stage.optional) - set(inputs):
        run_block.pop(name, None)
    run_block.update(
        stage=job.stage.id,
        output_dir=output_url,
        work_dir=work_url,
        seed=int(config.get("seed", 1234)),
        inputs={
            n: {"name": v.name, "version": v.version, "digest": v.digest, "type": v.type, "path": v.uri}
            for n, v in inputs.items()
        },
        **({"sources": snapshots} if snapshots else {}),
    )
    config["run"] = run_block
    return PreparedStage(job, key, inputs, output_url, work_url, OmegaConf.to_yaml(OmegaConf.create(config)))


class StageCachePolicy(CachePolicy):
    """Key = cache key + output location, both known before the job runs: the first run's result
    is recorded under it, so the second is Cached in Prefect. That Prefect holds a record does not
    make a stage cached; run_prepared_stage refreshes the record where the output is gone."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        prepared: PreparedStage = inputs["prepared"]
        # The output's location is part of the key: the same content in another store is not a hit.
        where = hashlib.sha256(prepared.output_url.encode()).hexdigest()[:8]
        return f"nano3-{prepared.cache_key}-{where}"


#: Seconds a stage waits, after a progress update the Prefect server did not take, before it
#: tries again (the updates in between are skipped).
PROGRESS_RETRY_SECONDS = 10.0


class ProgressReporter:
    """Turns the recipe's progress lines into a Prefect progress artifact; logs every other line.

    Progress is best effort: the job goes on whether or not the Prefect server hears of it. While
    the server (or its database) is down or restarting, an update it does not take is skipped,
    with one warning for the whole outage, and the next try comes PROGRESS_RETRY_SECONDS later;
    the first update that reaches the server again brings the artifact up to date. Each update is
    sent once, without the client's retries (a minute of backoff while the server is down): the
    job's log lines and its end wait behind it, and a failed update must not fail the stage (its
    retry would submit the job a second time).
    """

    def __init__(self, stage_id: str) -> None:
        self.stage_id = stage_id
        self.logger = get_run_logger()
        self.artifact_id: Any = None
        #: The progress the server last took, in percent (None: none yet).
        self.last_percent: float | None = None
        #: When an update first failed to reach the server (None: the server has them all).
        self.unreachable_since: float | None = None
        self.next_try = 0.0

    def __call__(self, line: str) -> None:
        if not line.startswith(PROGRESS_PREFIX):
            self.logger.info(line)
            return
        update = json.loads(line[len(PROGRESS_PREFIX):])
        self._send(round(100.0 * update["step"] / max(1, update["total"]), 1))
        metrics = ", ".join(f"{k}={v}" for k, v in update.items() if k not in ("step", "total", "time"))
        self.logger.info(f"step {update['step']}/{update['total']} {metrics}".rstrip())

    def _send(self, percent: float) -> None:
        """Create or update the progress artifact, unless the server has this value or is out of reach."""
        if percent == self.last_percent or time.monotonic() < self.next_try:
            return
        import httpx
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        try:
            with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
                if self.artifact_id is None:
                    from tasks.lineage import artifact_key

                    self.artifact_id = create_progress_artifact(
                        progress=percent, key=artifact_key(self.stage_id, "progress"),
                        description=f"{self.stage_id} progress",
                    )
                else:
                    update_progress_artifact(self.artifact_id, progress=percent)
        except (httpx.HTTPError, OSError) as exc:
            self.next_try = time.monotonic() + PROGRESS_RETRY_SECONDS
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                self.logger.warning(
                    f"{self.stage_id}: progress not sent to the Prefect server ({reason}); the job goes on, "
                    f"progress updates are skipped until the server answers"
                )
            return
        if self.unreachable_since is not None:
            self.logger.info(
                f"{self.stage_id}: the Prefect server answers again after "
                f"{time.monotonic() - self.unreachable_since:.0f} s; progress resumes at {percent:g}%"
            )
            self.unreachable_since = None
        self.last_percent = percent


def _publish(prepared: PreparedStage, store: ArtifactStore) -> ArtifactVersion:
    manifest = store.read_manifest(prepared.output_url)
    if manifest is None:
        raise StageFailed(f"{prepared.stage_id}: no manifest at {prepared.output_url}")
    store.verify(prepared.job.stage.artifact, prepared.output_url, manifest)
    if manifest.type != prepared.job.stage.produces:
        raise ArtifactError(
            f"{prepared.stage_id} produced a {manifest.type} artifact, the stage declares {prepared.job.stage.produces}"
        )
    return store.publish(prepared.job.stage.artifact, prepared.output_url, manifest, cache_key=prepared.cache_key)


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: a failed job is retried, a full store is not (no space frees
    itself while Prefect waits)."""
    return not isinstance(state.result(raise_on_failure=False), StoreFull)


def _store_full(prepared: PreparedStage, store: ArtifactStore, cause: str) -> StoreFull:
    # A remote store does not fill up: a job that ran out of space did so in its work folder.
    where = f"the artifact store {store.root}" if store.is_local else f"the job's work folder {prepared.work_url}"
    return StoreFull(
        f"{prepared.stage_id}: no space left for artifact {prepared.job.stage.artifact} in {where} "
        f"({cause}); nothing was published for it, its registry and `latest` are unchanged. "
        "Free space and rerun: the stages that finished are not redone"
    )


def _job_out_of_space(outcome: JobOutcome) -> str | None:
    """The job's own last word when it stopped for want of space (Python's `OSError: [Errno 28] …`)."""
    found = [line for line in outcome.log_tail if any(os.strerror(n) in line for n in NO_SPACE)]
    return found[-1].strip() if found else None


STAGE_TASK_OPTIONS: dict[str, Any] = dict(
    name="nano3-stage",
    task_run_name="{prepared.stage_id}",
    cache_policy=StageCachePolicy(),
    persist_result=True,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.2,
    retry_condition_fn=_worth_retrying,
)


def submit_stage(
    prepared: PreparedStage,
    store: ArtifactStore,
    wandb: WandbConfig | None,
    *,
    detached: bool,
    on_line: Callable[[str], None],
) -> JobOutcome:
    """Submit the stage's job (or re-attach to the one computing its cache key): the one way a
    stage is submitted, attached (then waited for) or detached (`--batch`, then left running).
    The job's env and secrets are assembled inside, from the store and [wandb], for both modes.

    Never while a job is still running for the stage: a scheduler's is re-attached to through
    its submission record (tasks.submit); a local one is waited for (ArtifactStore.wait_for_jobs),
    and if it finished the stage, nothing is submitted (an outcome `reattached`, as for a
    scheduler's job that the rerun found running)."""
    logger = get_run_logger()
    if not prepared.job.profile.job_outlives_submitter:
        # A local job of a killed run may still be running (it stops within a second of its
        # orchestrator) and may yet finish the stage: wait for its end, then look again.
        previous = store.wait_for_jobs(prepared.work_url, prepared.stage_id, on_wait=logger.info)
        if store.read_manifest(prepared.output_url) is not None:
            record = store.read_record(prepared.cache_key)
            by = f" (pid {previous})" if previous else ""
            logger.info(f"{prepared.stage_id}: the job of an earlier run{by} finished it; nothing to submit")
            return JobOutcome(
                "SUCCEEDED", record.experiment_id if record else "", record.job_id if record else None, True, []
            )
    mode = "detached " if detached else ""
    logger.info(
        f"{prepared.stage_id}: cache key {prepared.cache_key}, submitting {mode}through {prepared.job.profile.executor}"
    )
    return submit_and_wait(
        prepared.job,
        resolved_config=prepared.resolved_yaml,
        cache_key=prepared.cache_key,
        work_dir=prepared.work_url,
        store=store,
        wandb=wandb,
        detached=detached,
        on_line=on_line,
    )


def _submit_until_done(prepared: PreparedStage, store: ArtifactStore, wandb: WandbConfig | None) -> Literal["ran", "reattached"]:
    """Submit (or re-attach), wait, and chain jobs stopped by a time limit; fail without a manifest."""
    logger = get_run_logger()
    reporter = ProgressReporter(prepared.stage_id)
    for chained in range(1, MAX_CHAINED_JOBS + 1):
        outcome = submit_stage(prepared, store, wandb, detached=False, on_line=reporter)
        if not outcome.stopped_by_time_limit or store.read_manifest(prepared.output_url) is not None:
            break
        # A time limit is progress, not a failure: the next job resumes from the checkpoint.
        logger.info(f"{prepared.stage_id}: job {outcome.job_id} reached its time limit; submitting job {chained + 1}")
    if store.read_manifest(prepared.output_url) is None:
        if cause := _job_out_of_space(outcome):
            raise _store_full(prepared, store, f"job {outcome.job_id}: {cause}")
        tail = "\n".join(outcome.log_tail[-20:])
        raise StageFailed(
            f"{prepared.stage_id}: job {outcome.job_id} ended {outcome.state} without a manifest; last log lines:\n{tail}"
        )
    return "reattached" if outcome.reattached else "ran"


def _run_stage(prepared: PreparedStage, store: ArtifactStore, wandb: WandbConfig | None) -> StageResult:
    """Attached: submit (or re-attach), wait, publish. flows.detached submits through submit_stage too."""
    from tasks.lineage import (
        describe_asset_materialization,
        import_wandb_in_background,
        mirror_to_wandb,
        publish_report,
        publish_stage_artifacts,
    )

    logger = get_run_logger()
    started = time.monotonic()
    status: Literal["ran", "cached", "reattached"] = "cached"
    # Held through publishing: a second identical run waits, then finds the manifest and the
    # version this one published, instead of submitting a job into the same work folder.
    try:
        with store.claim(prepared.cache_key, on_wait=logger.info):
            if store.read_manifest(prepared.output_url) is None:
                import_wandb_in_background(wandb)
                status = _submit_until_done(prepared, store, wandb)
            else:
                logger.info(f"{prepared.stage_id}: output for cache key {prepared.cache_key} exists; verifying")
            artifact = _publish(prepared, store)
    except OSError as error:  # the orchestrator's own writes: config, record, registry
        if no_space_left(error):
            raise _store_full(prepared, store, str(error)) from error
        raise
    publish_stage_artifacts(prepared.stage_id, artifact, prepared.inputs, status)
    publish_report(prepared.stage_id, artifact)
    describe_asset_materialization(artifact)
    mirror_to_wandb(wandb, prepared.stage_id, artifact, prepared.inputs, store_wandb_dir(store))
    return StageResult(
        stage=prepared.stage_id,
        status=status,
        seconds=round(time.monotonic() - started, 1),
        artifact=artifact,
        inputs=prepared.inputs,
    )


run_stage = task(**STAGE_TASK_OPTIONS)(_run_stage)


def stage_task(prepared: PreparedStage) -> Task[..., StageResult]:
    """run_stage declared as materializing this stage's output from its inputs' assets.

    The output location is content-addressed, so it is known before the job runs: Prefect's asset
    graph then links every stage's output to the outputs it consumed.
    """
    from prefect.assets import materialize

    from tasks.lineage import input_assets, output_asset

    return materialize(
        output_asset(prepared.job.stage, prepared.output_url),
        by="nemo-run",
        asset_deps=input_assets(prepared.inputs),
        **STAGE_TASK_OPTIONS,
    )(_run_stage)


def submit_prepared_stage(prepared: PreparedStage, store: ArtifactStore, wandb: WandbConfig | None) -> PrefectFuture:
    """The stage task for one prepared stage, started in the current flow's task runner (a worker
    thread): it runs the stage, or verifies and publishes the output its cache key already has.

    Cached exactly when the output exists: where the store has no manifest for it (store wiped,
    output deleted) Prefect's record of an earlier run is not used but replaced (refresh_cache).
    """
    task = stage_task(prepared)
    if store.read_manifest(prepared.output_url) is None:
        task = task.with_options(refresh_cache=True)
    return task.submit(prepared, store, wandb)


def stage_result(prepared: PreparedStage, future: PrefectFuture, store: ArtifactStore) -> StageResult:
    """The finished stage task's result (its exception, where it failed), status `cached` when
    Prefect found it so."""
    future.wait()
    state = future.state
    result: StageResult = state.result()
    if state.name == "Cached":
        # The store, not Prefect's record, holds the truth: verify the output and publish it again
        # (`latest` points at it), as a run that finds the output does.
        artifact = _publish(prepared, store)
        # Made anew, not copied: the cached result may be a StageResult of an earlier version of
        # this class (Prefect stored it pickled), without the fields added since.
        result = StageResult(stage=result.stage, status="cached", seconds=0.0, artifact=artifact, inputs=result.inputs)
    return result


def run_prepared_stage(prepared: PreparedStage, store: ArtifactStore, wandb: WandbConfig | None) -> StageResult:
    """One stage task, waited for."""
    return stage_result(prepared, submit_prepared_stage(prepared, store, wandb), store)


def store_wandb_dir(store: ArtifactStore):  # noqa: ANN201 - Path
    """W&B writes its offline runs next to a local store, or under ./.nano3 for a remote one."""
    from pathlib import Path

    return Path(store.root) / "_wandb" if store.is_local else Path(".nano3") / "wandb"

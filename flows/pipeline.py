"""The nano3 Prefect flow: every stage through the one generic task, as a graph of their inputs."""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.settings import WandbConfig
from flows.detached import check_detachable, submit_jobs
from flows.promotion import gate_stage, gated
from flows.run_options import RunOptions, take_resolved
from tasks.artifacts import ArtifactStore, ArtifactVersion, open_store
from tasks.job_config import JobConfig
from tasks.stage_task import PreparedStage, StageResult, prepare_stage, stage_result, submit_prepared_stage
from tasks.stages import STAGES, STAGES_BY_ID


#: Every stage may be in flight at once; `max_parallel` is the bound the flow keeps.
@flow(name="nano3", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=len(STAGES)))
def nano3_pipeline(
    config: str = "tiny",
    run: str | None = None,
    batch: str | None = None,
    stages: list[str] | None = None,
    overrides: list[str] | None = None,
    max_parallel: int | None = None,
) -> list[StageResult]:
    """Data prep → pretrain → SFT → RL → convert → eval, each stage cached by its inputs and config,
    independent stages at the same time (at most `max_parallel`; default: flows.stage_graph)."""
    logger = get_run_logger()
    options = RunOptions(config=config, run=run, batch=batch, overrides=tuple(overrides or ()), max_parallel=max_parallel)
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
    results = execute_stages(jobs, store, context.wandb, options.max_parallel)
    for index, (job, result) in enumerate(zip(jobs, results)):
        if gated(job):
            verdict = gate_stage(job, result.artifact, result.inputs, store, context.wandb)
            results[index] = result.model_copy(update={"gate": verdict})
    return results


def execute_stages(
    jobs: list[JobConfig], store: ArtifactStore, wandb: WandbConfig | None, max_parallel: int | None = None
) -> list[StageResult]:
    """Run the jobs inside the current flow as a graph: each stage starts once the stages it reads
    from are done (flows.stage_graph), at most `max_parallel` at once, in the jobs' order where
    several are ready. A failed stage skips the stages that need it; independent ones go on. The
    first failure is raised once nothing runs any more."""
    from flows.stage_graph import describe, parallelism
    from tasks.lineage import publish_run_lineage
    from tasks.stopping import stoppable_waits

    limit = parallelism(jobs, max_parallel)
    run = _GraphRun(jobs, store, wandb, limit.limit, get_run_logger().info)
    if len(jobs) > 1:
        run.say("\n".join(describe(jobs, limit)))  # the order the dry-run shows
    with stoppable_waits() as ending:
        try:
            while run.start_ready():
                run.collect_next()
        except BaseException:
            ending.set()  # a stop signal or an error here: the stage threads leave their waits
            raise
    if run.failures:
        if len(run.failures) > 1:
            run.say(f"not finished: {', '.join(run.failures)}; finished: {', '.join(run.results) or 'none'}")
        raise [error for error in run.failures.values() if not isinstance(error, StageSkipped)][0]
    ordered = [run.results[job.stage.id] for job in jobs]
    publish_run_lineage([(r.stage, r.artifact, r.inputs) for r in ordered])
    return ordered


class StageSkipped(Exception):
    """A stage not run because a stage it needs failed."""


class _GraphRun:
    """One run's way through the graph: what waits, what runs, what is done and what failed."""

    def __init__(self, jobs: list[JobConfig], store: ArtifactStore, wandb: WandbConfig | None, limit: int,
                 say: Callable[[str], None]) -> None:
        from flows.stage_graph import dependencies

        self.store, self.wandb, self.limit, self.say = store, wandb, limit, say
        self.waits = dependencies(jobs)
        self.pending = list(jobs)
        self.running: dict[PrefectFuture, PreparedStage] = {}
        self.produced: dict[str, ArtifactVersion] = {}
        self.results: dict[str, StageResult] = {}
        self.failures: dict[str, BaseException] = {}

    def start_ready(self) -> bool:
        """Start what can start, skip what cannot run any more; whether anything is running."""
        for job in list(self.pending):
            if len(self.running) >= self.limit:
                break
            stage = job.stage.id
            lost = [needed for needed in self.waits[stage] if needed in self.failures]
            if lost:
                self.pending.remove(job)
                self.failures[stage] = StageSkipped(f"{stage}: not run: it needs {lost[0]}, which did not finish")
                self.say(str(self.failures[stage]))
            elif all(needed in self.results for needed in self.waits[stage]):
                self.pending.remove(job)
                try:
                    prepared = prepare_stage(job, self.store, self.produced, say=self.say)
                except Exception as error:  # noqa: BLE001 - raised once nothing runs
                    self.failures[stage] = error
                    continue
                self.running[submit_prepared_stage(prepared, self.store, self.wandb)] = prepared
        if not self.running and self.pending:  # the jobs are in the stages' order: what a stage waits for comes first
            raise RuntimeError(f"{self.pending[0].stage.id} waits for {', '.join(self.waits[self.pending[0].stage.id])}, not started")
        return bool(self.running)

    def collect_next(self) -> None:
        """Wait for the next stage to finish: its result, or its failure."""
        from prefect.futures import as_completed

        finished = next(as_completed(list(self.running)))
        prepared = self.running.pop(finished)
        try:
            result = stage_result(prepared, finished, self.store)
        except Exception as error:  # noqa: BLE001 - raised once nothing runs
            self.failures[prepared.stage_id] = error
            return
        self.produced[result.artifact.name] = result.artifact
        self.results[result.stage] = result

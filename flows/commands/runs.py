"""`nemotron runs list|status|logs|cancel`: follow submissions after the command that made them.

A run id is what `runs list` shows: a NeMo-Run experiment id (nano3-pretrain_1717000000), a job id
(the Slurm job number), a prefix of the cache key, or, for `status` and `logs`, a Prefect flow run
(its name or id). Submissions are read from the artifact store's `_runs/` records (the store of
env.toml's [artifacts], NANO3_ARTIFACTS_ROOT, or ./.nano3/artifacts), flow runs from the Prefect
API when one is configured or a local Prefect database exists. Talking to NeMo-Run, they keep
out the imports it never needs here (tasks/lean_imports.py), as a dry-run does.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from blocks.errors import ConfigError
from flows.commands.errors import COMMAND_LINE, user_errors
from tasks.lean_imports import without


def executor_type(kind: str):  # noqa: ANN201 - type[_Profile], imported lazily (Prefect types)
    from blocks.profiles import PROFILE_TYPES

    return PROFILE_TYPES[kind]

runs_app = typer.Typer(no_args_is_help=True, help="Past and running submissions: NeMo-Run jobs and Prefect flow runs.")

RunId = Annotated[str, typer.Argument(metavar="RUN", help="Experiment id, job id, cache-key prefix, or Prefect flow run.")]


def _store() -> Any:
    """The store the pipeline writes to, found the same way (env.toml [artifacts], env var, default)."""
    from blocks.env_toml import discover_env_file
    from blocks.settings import ArtifactsConfig, parse_section
    from tasks.artifacts import open_store

    env = discover_env_file()
    settings = None
    if env is not None and "artifacts" in env.reserved:
        settings = parse_section("artifacts", env.section("artifacts"), file=str(env.path))
        assert isinstance(settings, ArtifactsConfig)
    return open_store(settings)


# --- Prefect flow runs ----------------------------------------------------------------------


def _flow_runs(limit: int, ident: str | None = None) -> list[tuple[Any, str]] | None:
    """(flow run, flow name) of the nano3 flows, newest first; None when there is no Prefect API
    to ask (asking would start a temporary server only to find an empty database)."""
    from blocks.profile_lookup import block_store_configured, prefect_api

    if not block_store_configured():
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    run_filter = None
    if ident is not None:
        try:
            run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(ident)]))
        except ValueError:
            run_filter = FlowRunFilter(name=FlowRunFilterName(any_=[ident]))
    with prefect_api(), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(like_="nano3")),
            flow_run_filter=run_filter,
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )
        names = {run.flow_id: client.read_flow(run.flow_id).name for run in runs}
    return [(run, names[run.flow_id]) for run in runs]


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


# --- commands -------------------------------------------------------------------------------


@runs_app.command("list")
@user_errors
def list_runs(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many of each.")] = 20,
    flows: Annotated[bool, typer.Option("--flows/--no-flows", help="Also list the Prefect flow runs.")] = True,
) -> None:
    """Submissions of the artifact store (newest first) and the nano3 Prefect flow runs."""
    from rich.table import Table

    from flows.summary import wide_console
    from tasks.submissions import list_records, output_state

    store = _store()
    records = list_records(store)[:limit]
    table = Table(title=f"submissions ({store.url('_runs')})")
    for column in ("run", "stage", "executor", "job id", "submitted", "attempt", "output"):
        table.add_column(column, no_wrap=column in ("run", "output"), overflow="fold")
    for record in records:
        table.add_row(
            record.experiment_id,
            record.stage,
            record.executor,
            record.job_id or "-",
            record.submitted.replace("T", " ").removesuffix("+00:00"),
            str(record.attempt),
            output_state(store, record),
        )
    out = wide_console()
    out.print(table if records else "no submissions yet")
    if not flows:
        return
    flow_runs = _flow_runs(limit)
    if not flow_runs:
        where = "no Prefect API configured and no local Prefect database" if flow_runs is None else "none yet"
        out.print(f"no nano3 Prefect flow runs ({where})")
        return
    runs = Table(title="Prefect flow runs")
    for column in ("flow run", "flow", "state", "started", "id"):
        runs.add_column(column, overflow="fold")
    for run, flow_name in flow_runs:
        runs.add_row(run.name, flow_name, run.state_name or "-", _when(run.start_time), str(run.id))
    out.print(runs)


def _submission_or_flow_run(ident: str) -> tuple[Any, Any, list[tuple[Any, str]]]:
    """(store, record, []) for a submission; (store, None, [(flow run, flow)]) for a flow run."""
    from tasks.submissions import find_record

    store = _store()
    try:
        return store, find_record(store, ident), []
    except ConfigError:
        flow_runs = _flow_runs(1, ident)
        if flow_runs:
            return store, None, flow_runs
        raise


@runs_app.command("status")
@user_errors
def status(run: RunId) -> None:
    """The state of one submission, asked of its scheduler now (or of a Prefect flow run)."""
    from tasks.submissions import job_info, open_experiment, output_state

    store, record, flow_runs = _submission_or_flow_run(run)
    if record is None:
        flow_run, flow_name = flow_runs[0]
        print(f"flow run: {flow_run.name} ({flow_name}), id {flow_run.id}")
        print(f"state:    {flow_run.state_name}")
        print(f"started:  {_when(flow_run.start_time)}   ended: {_when(flow_run.end_time)}")
        return
    output = output_state(store, record)
    if not executor_type(record.executor).job_outlives_submitter:
        # NeMo-Run's local jobs end with the process that started them; the manifest tells the rest.
        state, job_id = ("SUCCEEDED" if output != "-" else "ENDED"), record.job_id
    else:
        with without():
            info = job_info(open_experiment(record))
        state, job_id = info.state, info.job_id or record.job_id
    print(f"run:       {record.experiment_id}")
    print(f"stage:     {record.stage} (executor {record.executor}, attempt {record.attempt})")
    print(f"job:       {job_id or '-'}")
    print(f"state:     {state}")
    print(f"submitted: {record.submitted}")
    print(f"cache key: {record.cache_key}")
    shown = {"-": "not written yet", "ready": "ready: the next run of the stage publishes it"}.get(output, output)
    print(f"output:    {shown}")


def _log_printer(label: str) -> tuple[Any, Any]:
    """(on_line, bars): bars on a terminal; elsewhere progress lines become `step i/n metrics` text."""
    from rich.console import Console

    from flows.progress import ProgressBars, parse_progress

    console = Console(stderr=True)
    if console.is_terminal:
        bars = ProgressBars(console)
        return (lambda line: bars.feed(label, line)), bars

    def plain(line: str) -> None:
        update = parse_progress(line)
        print(line if update is None else f"[{label}] step {update.step}/{update.total} {update.metrics}".rstrip(), flush=True)

    return plain, None


@runs_app.command("logs")
@user_errors
def logs(
    run: RunId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """The job's log (progress lines as bars on a terminal); a flow run's log from Prefect."""
    import contextlib

    from tasks.submissions import open_experiment, stream_logs

    _, record, flow_runs = _submission_or_flow_run(run)
    if record is None:
        _print_flow_run_logs(flow_runs[0][0])
        return
    on_line, bars = _log_printer(record.stage)
    with bars or contextlib.nullcontext(), without():
        info = stream_logs(open_experiment(record), on_line, follow=follow)
    typer.secho(f"{record.experiment_id}: {info.state}", err=True, fg=typer.colors.CYAN)


def _print_flow_run_logs(flow_run: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from blocks.profile_lookup import prefect_api

    with prefect_api(), get_client(sync_client=True) as client:
        for entry in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))):
            print(f"{_when(entry.timestamp)} {entry.message}")


@runs_app.command("cancel")
@user_errors
def cancel(run: RunId) -> None:
    """Cancel a queued or running job through its scheduler (scancel, the cloud API)."""
    from tasks.submissions import cancel as cancel_job
    from tasks.submissions import find_record, job_info, open_experiment

    record = find_record(_store(), run)
    if not executor_type(record.executor).job_outlives_submitter:
        raise ConfigError(
            f"{record.experiment_id} ran on this machine: it ended with the command that started it",
            file=COMMAND_LINE,
            hint="nothing to cancel",
        )
    with without():
        exp = open_experiment(record)
        before = job_info(exp)
        if not before.active:
            print(f"{record.experiment_id}: job {before.job_id or record.job_id} already {before.state}; nothing to cancel")
            return
        after = cancel_job(exp)
    print(f"{record.experiment_id}: cancelled {record.stage} job {after.job_id or record.job_id} (now {after.state})")

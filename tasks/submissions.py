"""Following a submission after the command that made it has returned: status, logs, cancel.

Every submission leaves a record in the store (`_runs/<cache_key>.json`: stage, executor, NeMo-Run
experiment id, job id). The experiment itself lives in NeMo-Run's home on the machine that
submitted it; `run.Experiment.from_id` re-opens it and asks the scheduler (sacct, the DGX Cloud
or Lepton API) about the job. The NeMo-Run calls are all here, as in tasks.submit, and imported
lazily: listing records needs neither NeMo-Run nor Prefect.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks.errors import ConfigError
from tasks.artifacts import ArtifactStore, SubmissionRecord
from tasks.stages import STAGES_BY_ID
from tasks.step_catalog import COMMAND_LINE
from tasks.thread_stdout import thread_stdout

#: How long `logs --follow` waits between polls of a job's log and state.
FOLLOW_SECONDS = 2.0
#: Shortest cache-key prefix accepted as a run id (a git-style short hash).
MIN_KEY_PREFIX = 6
#: NeMo-Run's log printer starts each line with a coloured `role/replica ` tag.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ROLE_TAG = re.compile(r"^[\w.-]{1,10}/\d+ ")


@dataclass(frozen=True)
class JobInfo:
    name: str
    state: str
    job_id: str | None
    handle: str | None
    local_dir: str | None

    @property
    def active(self) -> bool:
        from tasks.submit import ACTIVE

        return self.state in ACTIVE


def list_records(store: ArtifactStore) -> list[SubmissionRecord]:
    """Every submission record of the store, newest first."""
    found = []
    for path in store.fs.glob(f"{store.url('_runs')}/*.json"):
        record = store.read_record(Path(str(path)).stem)
        if record is not None:
            found.append(record)
    return sorted(found, key=lambda r: r.submitted, reverse=True)


def find_record(store: ArtifactStore, ident: str) -> SubmissionRecord:
    """A record by experiment id, job id or cache-key prefix; none or several is an error."""
    records = list_records(store)
    exact = [r for r in records if ident in (r.experiment_id, r.job_id, r.cache_key)]
    matches = exact or (
        [r for r in records if r.cache_key.startswith(ident) or r.experiment_id.startswith(ident)]
        if len(ident) >= MIN_KEY_PREFIX
        else []
    )
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(
            f"no submission '{ident}' in {store.url('_runs')}",
            file=COMMAND_LINE,
            hint="`nemotron runs list` shows the runs; ids are experiment ids, job ids or cache-key prefixes",
        )
    raise ConfigError(
        f"'{ident}' matches {len(matches)} submissions: {', '.join(r.experiment_id for r in matches[:5])}",
        file=COMMAND_LINE,
        hint="give more of the id",
    )


def output_state(store: ArtifactStore, record: SubmissionRecord) -> str:
    """`published <name:vN>`, `ready` (a manifest: the next run of the stage publishes it) or `-`.

    The manifest is the only proof that the job finished (tasks.stage_task)."""
    stage = STAGES_BY_ID.get(record.stage)
    slug = stage.slug if stage else record.stage.replace("/", "-")
    if store.read_manifest(store.output_url(slug, record.cache_key)) is None:
        return "-"
    latest = store.latest(stage.artifact) if stage else None
    if latest is not None and latest.cache_key == record.cache_key:
        return f"published {latest.ref}"
    return "ready"


def open_experiment(record: SubmissionRecord) -> Any:
    """The record's NeMo-Run experiment (or Ray job, tasks.ray_jobs), re-opened from NeMo-Run's
    home on this machine."""
    if record.ray_job:
        from nemo_run.config import get_nemorun_home

        from tasks import ray_jobs

        try:
            return ray_jobs.reopen(record.ray_job, record.experiment_id, record.job_id)
        except FileNotFoundError:
            raise ConfigError(
                f"{record.ray_job} {record.experiment_id} is not in {get_nemorun_home()}/ray_jobs",
                hint="status, logs and cancel work on the machine that submitted the job (or with its NEMORUN_HOME)",
            ) from None
    from nemo_run.config import get_nemorun_home

    from tasks.nemo_run_import import import_nemo_run
    from tasks.submit import follow_nemorun_home

    run = import_nemo_run()

    follow_nemorun_home()
    try:
        with thread_stdout(io.StringIO()):  # NeMo-Run prints banners while loading
            return run.Experiment.from_id(record.experiment_id)
    except AssertionError:
        raise ConfigError(
            f"experiment {record.experiment_id} is not in {get_nemorun_home()}/experiments",
            hint="status, logs and cancel work on the machine that submitted the job (or with its NEMORUN_HOME)",
        ) from None


def job_info(exp: Any) -> JobInfo:
    """The state of the experiment's one job, asked of its scheduler now."""
    with thread_stdout(io.StringIO()):
        statuses = exp.status(return_dict=True) or {}
    if not statuses:
        return JobInfo("", "UNKNOWN", None, None, None)
    name, info = next(iter(statuses.items()))
    state = getattr(info.get("status"), "name", str(info.get("status")))
    return JobInfo(name, state, info.get("job_id") or None, info.get("handle"), info.get("local_dir"))


def is_active(record: SubmissionRecord) -> bool:
    """Whether the job of `record` is still queued or running. Local jobs end with the command
    that started them (NeMo-Run's local scheduler), so they never are afterwards."""
    from blocks.profiles import PROFILE_TYPES

    if not PROFILE_TYPES[record.executor].job_outlives_submitter:
        return False
    try:
        return job_info(open_experiment(record)).active
    except ConfigError:
        return False


def stream_logs(exp: Any, on_line: Callable[[str], None], *, follow: bool) -> JobInfo:
    """Hand every log line of the job to `on_line`; with `follow`, until the job ends.

    Log files on this machine (local jobs, Slurm through a local tunnel) are read directly, as
    the attached run does; otherwise NeMo-Run fetches them through the job's tunnel or API.
    """
    from tasks.submit import LogTail, log_patterns

    info = job_info(exp)
    tail = LogTail(info.local_dir, on_line, log_patterns(exp))
    tail.poll()
    if tail.offsets or info.handle is None:  # a log file on this machine
        while follow and info.active:
            time.sleep(FOLLOW_SECONDS)
            tail.poll()
            info = job_info(exp)
        tail.poll()
        return info
    from nemo_run.run.logs import get_logs

    get_logs(_LineSink(on_line), identifier=info.handle, regex=None, should_tail=follow)
    return job_info(exp)


def cancel(exp: Any) -> JobInfo:
    """Ask the scheduler to cancel the job (scancel, the cloud API), then report its state."""
    info = job_info(exp)
    if not info.active:
        return info
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        exp.cancel(info.name)
    if "Failed to cancel" in captured.getvalue():
        reason = captured.getvalue().split("Error:", 1)[-1].strip().splitlines()[0]
        raise RuntimeError(f"cancelling {info.name} failed: {reason}")
    return job_info(exp)


class _LineSink(io.TextIOBase):
    """A file NeMo-Run's log printer writes to, handing on whole lines without its prefixes."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.buffer_ = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        from tasks.submit import LINE_PREFIX

        self.buffer_ += text
        *lines, self.buffer_ = self.buffer_.split("\n")
        for line in lines:
            plain = _ANSI.sub("", line)
            plain = LINE_PREFIX.sub("", plain.split(" ", 1)[1] if _ROLE_TAG.match(plain) else plain)
            self.on_line(plain)
        return len(text)

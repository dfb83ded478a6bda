"""Submitting a recipe through NeMo-Run, recording it, re-attaching to it, and waiting for it.

The NeMo-Run calls are all here, top to bottom: Experiment, add the Script, run detached, then
poll `exp.status()` (NeMo-Run's `exp.run()` does not raise when the job fails) while tailing the
job's log files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import uuid
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks.executors import build_executor, prepare_submission, scheduler_end_state, secret_command
from blocks.profiles import _Profile
from blocks.settings import WandbConfig
from tasks.artifacts import ArtifactStore, SubmissionRecord, _now
from tasks import ray_jobs
from tasks.job_config import JobConfig
from recipes.nano3.outage import backoff_delays
from tasks.nemo_run_import import import_nemo_run
from tasks.submission import job_target, recipe_task
from tasks.stopping import sleep_unless_stopping
from tasks.thread_stdout import thread_stdout

ACTIVE = {"SUBMITTED", "PENDING", "RUNNING", "UNKNOWN_ACTIVE"}
#: What NeMo-Run reports when the scheduler could not be asked (sacct failing while slurmdbd
#: restarts, a cloud API error): the job may well be running. Never read as an end.
UNANSWERED = "UNKNOWN"
#: How long a wait goes on asking a silent scheduler before the stage fails (Prefect retries it,
#: and the retry re-attaches to the same job: nothing is submitted twice).
UNANSWERED_LIMIT_SECONDS = 15 * 60
#: The loggers NeMo-Run's schedulers report a failed status query on.
SCHEDULER_LOGGERS = (
    *(f"nemo_run.run.torchx_backend.schedulers.{name}" for name in ("slurm", "dgxcloud", "lepton", "docker")),
    "tasks.ray_jobs",
)
#: How often the job's state and log are read: a job's end is noticed half of this later on
#: average; a status query of a local job costs a few milliseconds.
POLL_SECONDS = 0.5
#: Slurm end states that mean "stopped from outside, not broken": the job is resubmitted and the
#: recipe resumes from its checkpoint, without using up a retry.
RESUBMITTED_STATES = ("TIMEOUT", "PREEMPTED", "NODE_FAIL")
# The job's whole output, best first: NeMo-Run local's stdout+stderr, Slurm's, then stdout alone
# (torchrun also writes a per-rank stdout.log below the job folder: following two files at once
# would repeat every line).
LOG_PATTERNS = ("combined.log", "log-*.out", "stdout.log")
# torchrun's `[default0]:` and NeMo-Run's `[role/0]: ` line prefixes.
LINE_PREFIX = re.compile(r"^\[[\w./-]{1,40}\]: ?")


@dataclass
class JobOutcome:
    state: str
    experiment_id: str
    job_id: str | None
    reattached: bool
    log_tail: list[str]

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"

    @property
    def stopped_by_time_limit(self) -> bool:
        return self.state == "TIMEOUT"


def log_patterns(exp: Any) -> tuple[str, ...]:
    """The files a job's output is in: an Experiment's, or a NeMo-Run Ray job's."""
    return ray_jobs.LOG_PATTERNS if isinstance(exp, ray_jobs.RayJobRun) else LOG_PATTERNS


class _SchedulerComplaints(logging.Filter):
    """Holds back NeMo-Run's warnings about a failed status query (a dozen lines each, every
    poll) so that the wait reports them as one line."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return False

    @property
    def reason(self) -> str:
        """The scheduler's own last error line (`sacct: error: …`), else the first line."""
        text = "\n".join(self.messages)
        errors = [line.strip() for line in text.splitlines() if "error:" in line]
        return (errors[-1] if errors else text.strip().splitlines()[0] if text.strip() else "no answer")[:200]


@contextlib.contextmanager
def _scheduler_complaints() -> Iterator[_SchedulerComplaints]:
    complaints = _SchedulerComplaints()
    loggers = [logging.getLogger(name) for name in SCHEDULER_LOGGERS]
    for logger in loggers:
        logger.addFilter(complaints)
    try:
        yield complaints
    finally:
        for logger in loggers:
            logger.removeFilter(complaints)


def _state(exp: Any, complaints: _SchedulerComplaints | None = None) -> tuple[str, str | None, str | None]:
    """(state name, job id, local dir) of the experiment's only job."""
    with _scheduler_complaints() as heard:
        statuses = exp.status(return_dict=True) or {}
    if complaints is not None:
        complaints.messages = heard.messages
    if not statuses:
        return "UNKNOWN", None, None
    info = next(iter(statuses.values()))
    state = getattr(info.get("status"), "name", str(info.get("status")))
    return state, info.get("job_id"), info.get("local_dir")


class LogTail:
    """Follows the newest log file under a job folder and hands every new line to a callback."""

    def __init__(self, folder: str | None, on_line: Callable[[str], None],
                 patterns: tuple[str, ...] = LOG_PATTERNS) -> None:
        self.folder = Path(folder) if folder else None
        self.on_line = on_line
        self.patterns = patterns
        self.offsets: dict[Path, int] = {}
        self.last: list[str] = []

    def _newest_log(self) -> Path | None:
        if not self.folder or not self.folder.exists():
            return None
        for pattern in self.patterns:
            found = list(self.folder.rglob(pattern))
            if found:
                return max(found, key=lambda p: p.stat().st_mtime)
        return None

    def drain(self, quiet_seconds: float = 1.0, limit_seconds: float = 10.0) -> None:
        """After the job ended: its launcher may still be flushing the log (torchx copies a
        process's output into combined.log): read until the file stays quiet."""
        deadline = time.monotonic() + limit_seconds
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_seconds:
            if self.poll():
                quiet_since = time.monotonic()
            time.sleep(0.2)

    def poll(self) -> int:
        """Hand on the new complete lines; returns how many there were."""
        path = self._newest_log()
        if path is None:
            return 0
        start = self.offsets.get(path, 0)
        with path.open("rb") as handle:
            handle.seek(start)
            chunk = handle.read()
        complete = chunk.rfind(b"\n") + 1
        self.offsets[path] = start + complete
        lines = chunk[:complete].decode(errors="replace").splitlines()
        for raw in lines:
            line = LINE_PREFIX.sub("", raw)
            self.last = (self.last + [line])[-40:]
            self.on_line(line)
        return len(lines)


def follow_nemorun_home() -> None:
    """NeMo-Run's Slurm scheduler fixes its job-id index (`.slurm_jobs`) under the NEMORUN_HOME of
    import time; set_nemorun_home() later does not move it. A process that changes homes (a test
    suite, a worker serving several users) would look up its jobs in the wrong index and wait
    forever on a job it cannot see."""
    from nemo_run.config import get_nemorun_home
    from nemo_run.run.torchx_backend.schedulers import slurm as slurm_scheduler

    slurm_scheduler.SLURM_JOB_DIRS = os.path.join(get_nemorun_home(), ".slurm_jobs")


@contextlib.contextmanager
def keeping_signal_handlers() -> Iterator[None]:
    """Put back the SIGTERM/SIGINT handlers a submission replaced, and hand them a signal that
    arrived while they were replaced.

    torchx's local scheduler installs handlers that raise an ordinary exception when it is
    created in the main thread (NeMo-Run's local scheduler does not); caught by Prefect's task
    engine, that is a failure to retry, and the retry re-attached to the still running job: `kill`
    or Ctrl-C did not stop the run. With the run's own handlers back, either signal ends the flow
    run as Crashed, and the local job stops with its orchestrator.
    """
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in saved.items():
            if handler is not None:
                with contextlib.suppress(ValueError):  # only the main thread may set handlers
                    signal.signal(sig, handler)

    try:
        yield
    except Exception as exc:
        from torchx.schedulers.local_scheduler import SignalException

        if not isinstance(exc, SignalException):
            raise
        restore()
        os.kill(os.getpid(), exc.sigval)  # the run's handler takes it from here, as at any other moment
        raise
    finally:
        restore()


@contextlib.contextmanager
def leaving_without_waiting_when_stopped(exp: Any) -> Iterator[None]:
    """From the submission on, a stop (a signal, a crash) leaves the experiment without NeMo-Run
    waiting for the job: its exit waits for a local job to finish, training and all. A local job
    stops with this process; a scheduler's is re-attached by the rerun."""
    try:
        yield
    except BaseException:
        exp.detach = True
        raise


def _job_id(exp: Any) -> str | None:
    """The scheduler's id of the experiment's job, from its handle (`scheme://runner/id`), without
    asking the scheduler: known the moment the job is submitted."""
    handle = getattr(exp.jobs[0], "handle", "") if exp.jobs else ""
    parts = handle.partition("://")[2].split("/")
    return parts[1] if len(parts) > 1 and parts[1] else None


def _reattach(record: SubmissionRecord, job: JobConfig) -> Any | None:
    """The experiment (or Ray job) of a previous submission if its job is still active and can be
    followed.

    A local job cannot outlive the process that started it (NeMo-Run's local scheduler), and its
    recorded status is not trustworthy afterwards: local submissions are never re-attached.
    """
    if not job.profile.job_outlives_submitter:
        return None
    if record.ray_job:
        try:
            exp = ray_jobs.reopen(record.ray_job, record.experiment_id, record.job_id)
        except FileNotFoundError:  # submitted from another NeMo-Run home: nothing to follow it with
            return None
    else:
        run = import_nemo_run()
        try:
            with thread_stdout(io.StringIO()):
                exp = run.Experiment.from_id(record.experiment_id)
        except Exception:  # noqa: BLE001 - a missing or unreadable experiment folder means: resubmit
            return None
    state, _, _ = _state(exp)
    # A scheduler that does not answer now says nothing about the job: wait for it, never resubmit.
    return exp if state in ACTIVE or state == UNANSWERED else None


class SchedulerSilent(RuntimeError):
    """The scheduler gave no state for a job for UNANSWERED_LIMIT_SECONDS; the job may still run."""


def _state_when_answered(
    exp: Any, job_id: str | None, local_dir: str | None, on_line: Callable[[str], None],
    complaints: _SchedulerComplaints,
) -> tuple[str, str | None, str | None]:
    """Ask again, with backoff, until the scheduler gives a state: one log line per question."""
    started = time.monotonic()
    delays = backoff_delays()  # the store's schedule (recipes.nano3.outage): one way to back off
    state = UNANSWERED
    while state == UNANSWERED:
        silent_for = time.monotonic() - started
        if silent_for > UNANSWERED_LIMIT_SECONDS:
            raise SchedulerSilent(
                f"the scheduler gave no state for job {job_id} for {silent_for:.0f} s ({complaints.reason}); "
                "the job may still run: the stage's retry or a rerun re-attaches to it"
            )
        delay = next(delays)
        on_line(
            f"the scheduler did not answer about job {job_id} ({complaints.reason}); asking again in {delay:.0f} s"
        )
        sleep_unless_stopping(delay, f"job {job_id}")
        state, job_id, local_dir = _state(exp, complaints)
    on_line(f"the scheduler answers again: job {job_id} is {state} (silent for {time.monotonic() - started:.0f} s)")
    return state, job_id, local_dir


def _wait(exp: Any, on_line: Callable[[str], None], reattached: bool, profile: _Profile) -> JobOutcome:
    complaints = _SchedulerComplaints()
    state, job_id, local_dir = _state(exp, complaints)
    tail = LogTail(local_dir, on_line, log_patterns(exp))
    while state in ACTIVE or (state == UNANSWERED and profile.job_outlives_submitter):
        if state == UNANSWERED:
            state, job_id, local_dir = _state_when_answered(exp, job_id, local_dir, on_line, complaints)
            continue
        sleep_unless_stopping(POLL_SECONDS, f"job {job_id}")
        tail.poll()
        state, job_id, local_dir = _state(exp, complaints)
        tail.folder = Path(local_dir) if local_dir else tail.folder
    if not profile.job_outlives_submitter:
        # torchx's local scheduler closes the job's combined.log (joining the thread that copies
        # the process's output into it) before it reports an end state: the file is complete.
        tail.poll()
    else:
        tail.drain()
    if state == "FAILED" and (scheduler_end_state(profile, exp, job_id) or "").startswith(RESUBMITTED_STATES):
        state = "TIMEOUT"
    return JobOutcome(state, exp._id, job_id, reattached, tail.last)


def submit_and_wait(
    job: JobConfig,
    *,
    resolved_config: str,
    cache_key: str,
    work_dir: str,
    store: ArtifactStore,
    wandb: WandbConfig | None,
    detached: bool,
    on_line: Callable[[str], None],
) -> JobOutcome:
    """Re-attach to the job computing `cache_key` if one is running, else submit one; then wait,
    unless `detached`.

    The job's secret env vars (the profile's, the W&B key of `wandb`, the store's credentials) are
    assembled here, by tasks.submission.job_target, the same way for both modes and the dry-run.
    The record is written right after submission and before waiting: a crash while waiting
    leaves a rerun able to find the job.
    """
    run = import_nemo_run()
    follow_nemorun_home()
    previous = store.read_record(cache_key)
    exp = _reattach(previous, job) if previous else None
    if exp is not None:
        if detached:
            state, job_id, _ = _state(exp)
            return JobOutcome(state, exp._id, job_id, True, [])
        return _wait(exp, on_line, reattached=True, profile=job.profile)

    config_file = Path(work_dir) / "config.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(resolved_config)
    attempt = (previous.attempt + 1) if previous else 1
    ray_job = ray_jobs.job_name(job, cache_key, attempt) if ray_jobs.uses_ray_job(job) else None
    secrets_file = ray_jobs.secrets_file(ray_job) if ray_job else f".nano3-secrets/{uuid.uuid4().hex}.env"
    target = job_target(job, store=store, wandb=wandb, detached=detached, secrets_file=secrets_file)
    executor = build_executor(target)
    prepare_submission(executor, target)
    if ray_job:
        return _submit_ray_job(job, executor, ray_job, secret_command(target, executor), cache_key, attempt,
                               str(config_file), store, detached, on_line)
    # NeMo-Run prints banners and hints to stdout; the job's own log lines go through on_line,
    # whose logger prints to the real stdout while we wait.
    with thread_stdout(io.StringIO()):
        with (
            run.Experiment(f"nano3-{job.stage.slug}", executor=executor, log_level="WARN") as exp,
            leaving_without_waiting_when_stopped(exp),
        ):
            exp.add(recipe_task(job, str(config_file)), name=job.stage.slug)
            record = _new_record(job, cache_key, attempt, exp._id)
            # Recorded before the job exists, completed the moment it does: an orchestrator killed
            # in between leaves a rerun the experiment to re-open (NeMo-Run saves its job handle
            # right after submitting), never an unrecorded job to submit again.
            store.write_record(record)
            with keeping_signal_handlers():
                exp.run(detach=True)
            store.write_record(record.model_copy(update={"job_id": _job_id(exp), "submitted": _now()}))
            state, job_id, _ = _state(exp)
            if detached:
                return JobOutcome(state, exp._id, job_id, False, [])
            # Waiting inside the block: leaving it makes NeMo-Run wait on local jobs itself.
            with thread_stdout(None):
                return _wait(exp, on_line, reattached=False, profile=job.profile)


def _new_record(job: JobConfig, cache_key: str, attempt: int, experiment_id: str, ray_job: str | None = None
                ) -> SubmissionRecord:
    """A submission's record before its job exists (no job id yet)."""
    return SubmissionRecord(cache_key=cache_key, stage=job.stage.id, executor=job.profile.executor,
                            experiment_id=experiment_id, job_id=None, submitted=_now(), attempt=attempt, ray_job=ray_job)


def _submit_ray_job(
    job: JobConfig, executor: Any, name: str, secrets: str | None, cache_key: str, attempt: int, config_path: str,
    store: ArtifactStore, detached: bool, on_line: Callable[[str], None],
) -> JobOutcome:
    """The same steps for a NeMo-Run Ray job (tasks.ray_jobs): recorded under its name before the
    scheduler has it, its id (Slurm job, DGX Cloud workload) added the moment the scheduler
    answers. A rerun after a crash in between finds a Slurm job by its name in squeue (the name
    is this attempt's own), else resubmits."""
    record = _new_record(job, cache_key, attempt, name, ray_job=job.profile.ray_job)
    store.write_record(record)
    exp = ray_jobs.start(job, executor, name=name, config_path=config_path, secrets=secrets)
    store.write_record(record.model_copy(update={"job_id": exp.job_id, "submitted": _now()}))
    on_line(f"submitted {job.profile.ray_job} {name}: job {exp.job_id}")
    state, job_id, _ = _state(exp)
    if detached:
        return JobOutcome(state, exp._id, job_id, False, [])
    return _wait(exp, on_line, reattached=False, profile=job.profile)

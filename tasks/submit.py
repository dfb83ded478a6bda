"""Submitting a recipe through NeMo-Run, recording it, re-attaching to it, and waiting for it.

The NeMo-Run calls are all here, top to bottom: Experiment, add the Script, run detached, then
poll `exp.status()` (NeMo-Run's `exp.run()` does not raise when the job fails) while tailing the
job's log files.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import signal
import sys
import tempfile
import uuid
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks.executors import ExecutionTarget, build_executor, slurm_secrets_path
from blocks.profiles import LeptonProfile, LocalProfile, SlurmProfile
from blocks.settings import WandbConfig
from recipes.nano3.runtime import ORCHESTRATOR_PID_VAR
from tasks.artifacts import ArtifactStore, SubmissionRecord, _now
from tasks.job_config import JobConfig
from tasks.nemo_run_import import import_nemo_run
from tasks.submission import job_target, recipe_task

ACTIVE = {"SUBMITTED", "PENDING", "RUNNING", "UNKNOWN_ACTIVE"}
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


def _state(exp: Any) -> tuple[str, str | None, str | None]:
    """(state name, job id, local dir) of the experiment's only job."""
    statuses = exp.status(return_dict=True) or {}
    if not statuses:
        return "UNKNOWN", None, None
    info = next(iter(statuses.values()))
    state = getattr(info.get("status"), "name", str(info.get("status")))
    return state, info.get("job_id"), info.get("local_dir")


class LogTail:
    """Follows the newest log file under a job folder and hands every new line to a callback."""

    def __init__(self, folder: str | None, on_line: Callable[[str], None]) -> None:
        self.folder = Path(folder) if folder else None
        self.on_line = on_line
        self.offsets: dict[Path, int] = {}
        self.last: list[str] = []

    def _newest_log(self) -> Path | None:
        if not self.folder or not self.folder.exists():
            return None
        for pattern in LOG_PATTERNS:
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
    """Put back the SIGTERM/SIGINT handlers a submission replaced.

    torchx's local scheduler installs handlers that raise an ordinary exception; caught by
    Prefect's task engine, that is a failure to retry, and the retry re-attached to the still
    running job: `kill` or Ctrl-C did not stop the run. With Prefect's own handlers back, either
    signal ends the flow run as Crashed, and the local job stops with its orchestrator.
    """
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                with contextlib.suppress(ValueError):  # only the main thread may set handlers
                    signal.signal(sig, handler)


def _reattach(record: SubmissionRecord, job: JobConfig) -> Any | None:
    """The experiment of a previous submission if its job is still active and can be followed.

    A local job cannot outlive the process that started it (NeMo-Run's local scheduler), and its
    recorded status is not trustworthy afterwards: local submissions are never re-attached.
    """
    if isinstance(job.profile, LocalProfile):
        return None
    run = import_nemo_run()

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exp = run.Experiment.from_id(record.experiment_id)
    except Exception:  # noqa: BLE001 - a missing or unreadable experiment folder means: resubmit
        return None
    state, _, _ = _state(exp)
    return exp if state in ACTIVE else None


def _prepare_local_environment(secret_env: dict[str, str]) -> None:
    """Local jobs inherit this process's environment.

    - They run `python` and `torchrun` from PATH: make those this environment's, which has the
      recipes' libraries, even when the user did not activate it.
    - They watch this process (recipes.nano3.runtime.watch_orchestrator) and stop when it dies.
    - They get their secret env vars from it: NeMo-Run would write an executor's env_vars into
      its experiment folder in clear.
    """
    os.environ.update(secret_env)
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, path])
    os.environ[ORCHESTRATOR_PID_VAR] = str(os.getpid())


def _prepare_connection(executor: Any, target: ExecutionTarget) -> None:
    """What a submission needs before NeMo-Run talks to the cluster: credentials and secrets.

    - SSH with a passphrase-protected key: open the session ourselves, so NeMo-Run finds it
      connected and never prompts.
    - Lepton: the workspace credentials of the profile, for the Lepton client of this process.
    - Slurm: secret env vars go to a 0600 file in the job folder that the sbatch script sources
      and deletes; the script itself never holds them.
    """
    profile = target.profile
    if isinstance(profile, SlurmProfile):
        tunnel = executor.tunnel
        if profile.tunnel == "ssh" and profile.identity_passphrase is not None:
            from fabric import Connection

            tunnel.session = Connection(
                profile.host,
                user=profile.user,
                port=profile.port,
                connect_kwargs={
                    "key_filename": [tunnel.identity] if tunnel.identity else [],
                    "passphrase": profile.identity_passphrase.get_secret_value(),
                },
            )
            tunnel.session.open()
        secrets = target.secret_env()
        if secrets:
            _ship_secrets(tunnel, slurm_secrets_path(tunnel.job_dir, target), secrets)
    if isinstance(profile, LeptonProfile):
        for name, value in (
            ("LEPTON_WORKSPACE_ID", profile.workspace_id),
            ("LEPTON_WORKSPACE_URL", profile.workspace_url),
            ("LEPTON_WORKSPACE_TOKEN", profile.token.get_secret_value() if profile.token else None),
        ):
            if value:
                os.environ[name] = value


def _ship_secrets(tunnel: Any, path: str, secrets: dict[str, str]) -> None:
    text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(secrets.items()))
    with tempfile.NamedTemporaryFile("w", delete=False, prefix="nano3-secrets-") as handle:
        os.chmod(handle.name, 0o600)
        handle.write(text)
    try:
        if type(tunnel).__name__ == "SSHTunnel":
            tunnel.run(f"mkdir -p {shlex.quote(os.path.dirname(path))} && chmod 700 {shlex.quote(os.path.dirname(path))}")
            tunnel.put(handle.name, path)
            tunnel.run(f"chmod 600 {shlex.quote(path)}")
        else:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.replace(handle.name, path)
            os.chmod(path, 0o600)
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)


def _slurm_end_state(exp: Any, job_id: str | None) -> str | None:
    """Slurm's own word for how a job ended (TIMEOUT, PREEMPTED, FAILED…), which NeMo-Run folds
    into FAILED: a job stopped by its time limit made progress and is resubmitted, not retried."""
    executor = exp.jobs[0].executor if exp.jobs else None
    tunnel = getattr(executor, "tunnel", None)
    if tunnel is None or not job_id or type(executor).__name__ != "SlurmExecutor":
        return None
    for _ in range(5):  # right after a job ends, sacct may not list it for a second or two
        result = tunnel.run(f"sacct --noheader --parsable2 -X --format=State -j {shlex.quote(job_id)}", warn=True, in_stream=False)
        words = (result.stdout or "").split()
        if words:
            return words[0]
        time.sleep(1)
    return None


def _wait(exp: Any, on_line: Callable[[str], None], reattached: bool, *, local: bool = False) -> JobOutcome:
    state, job_id, local_dir = _state(exp)
    tail = LogTail(local_dir, on_line)
    while state in ACTIVE:
        time.sleep(POLL_SECONDS)
        tail.poll()
        state, job_id, local_dir = _state(exp)
        tail.folder = Path(local_dir) if local_dir else tail.folder
    if local:
        # torchx's local scheduler closes the job's combined.log (joining the thread that copies
        # the process's output into it) before it reports an end state: the file is complete.
        tail.poll()
    else:
        tail.drain()
    if state == "FAILED" and (_slurm_end_state(exp, job_id) or "").startswith(RESUBMITTED_STATES):
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
        return _wait(exp, on_line, reattached=True)

    config_file = Path(work_dir) / "config.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(resolved_config)
    target = job_target(
        job, store=store, wandb=wandb, detached=detached, secrets_file=f".nano3-secrets/{uuid.uuid4().hex}.env"
    )
    if isinstance(job.profile, LocalProfile):
        _prepare_local_environment(target.secret_env())
    executor = build_executor(target)
    _prepare_connection(executor, target)
    # NeMo-Run prints banners and hints to stdout; the job's own log lines go through on_line,
    # whose logger prints to the real stdout while we wait.
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(io.StringIO()):
        with run.Experiment(f"nano3-{job.stage.slug}", executor=executor, log_level="WARN") as exp:
            exp.add(recipe_task(job, str(config_file)), name=job.stage.slug)
            with keeping_signal_handlers():
                exp.run(detach=True)
            state, job_id, _ = _state(exp)
            store.write_record(
                SubmissionRecord(
                    cache_key=cache_key,
                    stage=job.stage.id,
                    executor=job.profile.executor,
                    experiment_id=exp._id,
                    job_id=job_id,
                    submitted=_now(),
                    attempt=(previous.attempt + 1) if previous else 1,
                )
            )
            if detached:
                return JobOutcome(state, exp._id, job_id, False, [])
            # Waiting inside the block: leaving it makes NeMo-Run wait on local jobs itself.
            try:
                with contextlib.redirect_stdout(real_stdout):
                    return _wait(exp, on_line, reattached=False, local=isinstance(job.profile, LocalProfile))
            except BaseException:
                # Stopped while waiting (a signal, a crash): leave without NeMo-Run waiting for the
                # job; a local one stops with this process, a scheduler's is re-attached later.
                exp.detach = True
                raise

"""`kill <pid>` or Ctrl-C stops a run, every time: the orchestrator exits within seconds, its job
stops, nothing is published, the flow run is Crashed (not retried), and a rerun resumes the job's
training from its checkpoint.

The toy pipeline runs as a command runs it (`python -m tests.reliability.runs`: inside
flows.stop_signals.stopped_by_signals, which every command that runs stages goes through). A terminal's
Ctrl-C is SIGINT to the whole foreground process group: the orchestrator is then started in a
session of its own and the signal sent with `os.killpg`, to it and every process it started there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import alive as _alive, children as _children, cmdline
from tests.reliability.runs import Sandbox, journal
from tests.reliability.toy_pipeline import FLOW_NAME

#: Training long enough (20 s) that only a stopped job leaves it unfinished.
OVERRIDES = ("toy/produce:steps=2", "toy/train:steps=80", "toy/train:sleep=0.25")
#: The command that runs the toy pipeline as `nemotron` runs a pipeline.
AS_COMMAND = "tests.reliability.runs"
#: The most a stop may take, from the signal to the orchestrator's exit.
STOP_BOUND_SECONDS = 30
REPEATS = int(os.environ.get("NANO3_CTRL_C_REPEATS", "6"))
SEED = int(os.environ.get("NANO3_CTRL_C_SEED", "1337"))


def _job_pids(sandbox: Sandbox) -> list[int]:
    """The toy training job's processes (recorded by the journal when each job starts)."""
    return [entry["pid"] for entry in journal(sandbox.store).get("toy/train", [])]


def _trainings(sandbox: Sandbox) -> dict[Path, tuple[list[dict], int]]:
    """Each training work folder: its jobs (journal entries) and its newest complete checkpoint's step."""
    found = {}
    for folder in (sandbox.root / "store" / "_work" / "toy-train").glob("*"):
        journal = folder / "jobs.jsonl"
        jobs = [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
        steps = [int(p.parent.name.removeprefix("step_")) for p in folder.glob("checkpoints/step_*/COMPLETE")]
        found[folder] = (jobs, max(steps, default=0))
    return found


def _wait_for_checkpoint(sandbox: Sandbox, orchestrator: subprocess.Popen,
                         before: dict[Path, tuple[list[dict], int]] | None = None) -> int:
    """Wait until a job started since `before` has completed a checkpoint of its own; its pid."""
    before = before or {}
    deadline = time.monotonic() + 240
    while True:
        for folder, (jobs, step) in _trainings(sandbox).items():
            jobs_before, step_before = before.get(folder, ([], 0))
            if len(jobs) > len(jobs_before) and step > step_before:
                return jobs[-1]["pid"]
        assert orchestrator.poll() is None, sandbox.log()[-3000:]
        assert time.monotonic() < deadline, "the training job made no checkpoint"
        time.sleep(0.05)


def _stop(orchestrator: subprocess.Popen, sig: signal.Signals, group: bool) -> float:
    """Send `sig` (to the orchestrator's process group, as a terminal does, if `group`); seconds
    until the orchestrator exited with 128 + the signal's number."""
    signalled = time.monotonic()
    if group:
        os.killpg(orchestrator.pid, sig)
    else:
        orchestrator.send_signal(sig)
    try:
        code = orchestrator.wait(timeout=STOP_BOUND_SECONDS)
    except subprocess.TimeoutExpired:
        orchestrator.kill()  # its job follows it within a second
        orchestrator.wait()
        pytest.fail(f"{sig.name}: the orchestrator was still running {STOP_BOUND_SECONDS} s later")
    took = time.monotonic() - signalled
    assert code == 128 + sig, f"exit code {code}: the run was not stopped by {sig.name}"
    return took


def _assert_job_gone(job: int) -> None:
    deadline = time.monotonic() + 10
    while _alive(job) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(job), "the job outlived its stopped orchestrator"


def _unfinished_runs() -> list:
    """The toy flow's runs on the test server that did not complete; each must have ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
    unfinished = [r for r in runs if r.state is not None and not r.state.is_completed()]
    assert all(r.state.is_crashed() or r.state.is_cancelled() or r.state.is_failed() for r in unfinished), [
        r.state.name for r in unfinished
    ]
    return unfinished


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_run_and_its_job(tmp_path: Path, prefect_api: str, sig: signal.Signals) -> None:
    """`kill <pid>`, or SIGINT to the orchestrator alone. SIGINT to the whole process group, as a
    terminal sends Ctrl-C: test_ctrl_c_stops_a_run_every_time, with the same checks, ten times."""
    sandbox = Sandbox(tmp_path, prefect_api)
    crashed_before = len(_unfinished_runs())
    orchestrator = sandbox.start(*OVERRIDES, module=AS_COMMAND, WANDB_MODE="disabled")
    job = _wait_for_checkpoint(sandbox, orchestrator)
    assert _alive(job)

    took = _stop(orchestrator, sig, group=False)
    print(f"{sig.name}: the orchestrator exited after {took:.1f} s")
    _assert_job_gone(job)
    assert not list((tmp_path / "store" / "toy-train").glob("*/manifest.json"))
    assert len(_job_pids(sandbox)) == 1, "the stopped task was not retried"
    assert len(_unfinished_runs()) == crashed_before + 1, "the stopped flow run is not marked"


def test_a_signal_caught_by_torchx_reaches_the_run_handler() -> None:
    """torchx's local scheduler, created in the main thread, replaces the SIGTERM/SIGINT handlers
    with ones that raise an ordinary exception (a task failure to Prefect, which retries it). A
    signal that lands while they are in place reaches the run's handler as at any other moment."""
    from torchx.schedulers.local_scheduler import _register_termination_signals

    from tasks.submit import keeping_signal_handlers

    class Stopped(BaseException):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(Stopped):
            with keeping_signal_handlers():
                _register_termination_signals()  # what torchx's LocalScheduler.__init__ does
                assert signal.getsignal(signal.SIGINT) is not handler
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is handler and signal.getsignal(signal.SIGTERM) is handler
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def test_ctrl_c_stops_a_run_every_time(tmp_path: Path, prefect_api: str) -> None:
    """Ctrl-C at seeded random moments of the job's wait, REPEATS times: every time the orchestrator
    exits within the bound, its job is gone and nothing is published. Every other run is the rerun
    of the one before it: its job resumes that training from its checkpoint."""
    sandbox = Sandbox(tmp_path, prefect_api)
    rng = random.Random(SEED)
    crashed_before = len(_unfinished_runs())
    took: list[float] = []
    for attempt in range(REPEATS):
        # A training of its own (a distinct learning rate) every other run; the rerun in between.
        overrides = (*OVERRIDES, f"toy/train:lr={attempt // 2 + 2}")
        before = _trainings(sandbox)
        orchestrator = sandbox.start(*overrides, module=AS_COMMAND, new_session=True, WANDB_MODE="disabled")
        job = _wait_for_checkpoint(sandbox, orchestrator, before)
        time.sleep(rng.uniform(0, 1.0))  # the moment of the job's wait the signal lands at
        took.append(_stop(orchestrator, signal.SIGINT, group=True))
        _assert_job_gone(job)
        assert not list((tmp_path / "store" / "toy-train").glob("*/manifest.json")), f"run {attempt + 1}"
    print(f"Ctrl-C, {REPEATS} times (seed {SEED}): the orchestrator exited after "
          + ", ".join(f"{t:.1f}" for t in took) + f" s (median {sorted(took)[len(took) // 2]:.1f}, max {max(took):.1f})")
    assert "did not finish reporting" not in sandbox.log(), "a stop ran into its deadline"
    assert len(_unfinished_runs()) == crashed_before + REPEATS, "a stopped flow run is not marked"
    trainings = _trainings(sandbox)
    # One job per run (none retried), the rerun's started once the stopped one was gone.
    assert sorted(len(jobs) for jobs, _ in trainings.values()) == [1] * (REPEATS % 2) + [2] * (REPEATS // 2)
    assert not [job for jobs, _ in trainings.values() for job in jobs if job["overlaps"]]
    job_logs = [p.read_text() for p in (tmp_path / "nemorun").rglob("toy-train/0/stdout.log")]
    assert sum("resumed from step" in text for text in job_logs) == REPEATS // 2


def test_ctrl_c_in_a_terminal_leaves_no_temporary_prefect_server_behind(tmp_path: Path) -> None:
    """Without a configured server Prefect starts a temporary one as a child process. A terminal's
    Ctrl-C must not reach it (the command reports the stop to it: the flow run is Crashed in its
    database), and the command stops it on exit (an exit handler, which a death by signal skips)."""
    sandbox = Sandbox(tmp_path, prefect_api="")
    (tmp_path / "home").mkdir()
    log = (tmp_path / "nano3.log").open("w")
    orchestrator = subprocess.Popen(
        [sys.executable, "-m", "flows.nano3", "--stages", "data_prep/pretrain"], cwd=tmp_path / "home",
        env=sandbox.env(PREFECT_API_URL=None, WANDB_MODE="disabled"), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.monotonic() + 240
    while "phase=" not in (tmp_path / "nano3.log").read_text():
        assert orchestrator.poll() is None, (tmp_path / "nano3.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the data prep job reported no progress"
        time.sleep(0.5)
    children = _children(orchestrator.pid)
    (server,) = [c for c in children if "uvicorn" in cmdline(c)]

    took = _stop(orchestrator, signal.SIGINT, group=True)
    print(f"Ctrl-C with Prefect's temporary server: the orchestrator exited after {took:.1f} s")
    deadline = time.monotonic() + 30
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [c for c in children if _alive(c)], "a child of the stopped run is still alive"
    database = tmp_path / "home" / ".prefect" / "prefect.db"
    with sqlite3.connect(database) as db:
        states = db.execute("SELECT state_type FROM flow_run").fetchall()
    assert states == [("CRASHED",)], f"the temporary server {server} did not record the stop: {states}"

"""Exactly-once across a crash: the rerun never submits a stage while a job of the killed run
still runs for it.

A local job stops when its orchestrator dies, but not in the same instant (it notices within a
second, and only once it has started): the crash campaign once saw a rerun submit toy/produce
while the killed run's job was still alive, and that job then finished the stage. Here that job
is held alive on purpose, through the real pipeline (tests/reliability/held_pipeline.py, the held
toy recipe tests/reliability/held/held.py):

- the killed run's job holds its job lock and finishes after the rerun has reached the stage:
  the rerun waits for it and publishes its output, submitting nothing;
- the killed run's job was started but had not reached its job lock when the rerun submitted:
  it stops there (its orchestrator is gone) and does no work; the rerun's job runs alone.

And the lock itself: the orchestrator's wait (ArtifactStore.wait_for_jobs) against job
processes that hold it (recipes.nano3.runtime.hold_job_lock).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from recipes.nano3 import runtime
from tasks.artifacts import ArtifactStore
from tests.reliability.held_pipeline import HELD
from tests.reliability.runs import PROJECT, Sandbox, registry_problems, versions

HELD_PIPELINE = "tests.reliability.held_pipeline"
#: W&B mirroring is no part of the exactly-once contract (and slow on 2 cores).
WANDB = {"WANDB_MODE": "disabled"}
T = TypeVar("T")

# --- the lock, job side and orchestrator side -----------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from recipes.nano3 import runtime
runtime.hold_job_lock(Path(sys.argv[1]))
print("holding", flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start_holder(work_dir: Path, orchestrator_pid: int) -> subprocess.Popen:
    """A process that does what a local job does first: hold the work folder's job lock."""
    work_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(PROJECT), **{runtime.ORCHESTRATOR_PID_VAR: str(orchestrator_pid)})
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(work_dir)], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_the_orchestrator_waits_for_every_job_holding_the_lock(isolated: Path, holders: list) -> None:
    store = ArtifactStore(str(isolated / "store"))
    work_url = store.work_url("toy-held", "k" * 16)
    work_dir = Path(work_url)
    assert store.wait_for_jobs(work_url, "toy/held") is None, "no job: no wait"

    # Two processes of one job (torchrun's ranks) hold it together.
    holders += [start_holder(work_dir, os.getpid()) for _ in range(2)]
    assert [h.stdout.readline().strip() for h in holders] == ["holding", "holding"]

    told: list[str] = []
    returned: list[str | None] = []
    waiter = threading.Thread(target=lambda: returned.append(store.wait_for_jobs(work_url, "toy/held", told.append)))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive(), "held: the orchestrator waits"
    assert len(told) == 1 and told[0].startswith("waiting for the previous job (pid ") and told[0].endswith(
        " of toy/held to end"), told
    holders[0].send_signal(signal.SIGKILL)
    holders[0].wait()
    time.sleep(0.5)
    assert waiter.is_alive(), "still held by the job's other process"
    holders[1].send_signal(signal.SIGKILL)  # the kernel drops the lock of a killed process
    waiter.join(timeout=10)
    assert not waiter.is_alive(), "released on the holders' death"
    assert returned and returned[0] is not None and returned[0].split("@")[0] in {str(h.pid) for h in holders}


def test_a_job_whose_orchestrator_is_gone_stops_at_its_lock(isolated: Path, holders: list) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # exited and reaped
    zombie = subprocess.Popen(["sleep", "60"])
    zombie.send_signal(signal.SIGKILL)
    while alive(zombie.pid):
        time.sleep(0.02)  # dead, deliberately not reaped yet: kill(pid, 0) still succeeds
    try:
        for orchestrator in (gone.pid, zombie.pid):
            job = start_holder(isolated / f"work-{orchestrator}", orchestrator)
            holders.append(job)
            output, _ = job.communicate(timeout=60)
            assert job.returncode == 143, output
            assert f"orchestrator {orchestrator} is gone; not starting" in output
            assert "holding" not in output
    finally:
        zombie.wait()


def test_orchestrator_alive_only_for_a_running_process_started_before_the_job() -> None:
    assert runtime.process_alive(os.getppid())
    later = subprocess.Popen(["sleep", "60"])  # started after this process: a reused pid, not its orchestrator
    try:
        assert not runtime.process_alive(later.pid)
    finally:
        later.kill()
        later.wait()
    assert not runtime.process_alive(later.pid)


# --- through the real pipeline ---------------------------------------------------------------


def wait_until(condition: Callable[[], T], what: str, timeout: float = 240) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def held_jobs(store: ArtifactStore) -> list[dict]:
    """The held stage's job starts, from its journal (tests/toy_recipes/journal.py)."""
    return [json.loads(line) for path in Path(store.root, "_work", HELD.slug).glob("*/jobs.jsonl")
            for line in path.read_text().splitlines()]


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def stop(processes: list[subprocess.Popen], pids: list[int]) -> None:
    """What a failed test leaves running: the orchestrators it started, the jobs it recorded."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(900)
def test_the_rerun_waits_for_the_killed_runs_job_and_submits_nothing(prefect_api: str, isolated: Path) -> None:
    sandbox = Sandbox(isolated / "held", prefect_api)
    store = sandbox.store
    release = sandbox.root / "release"
    args = (f"toy/held:release={release}",)
    first = sandbox.start(*args, module=HELD_PIPELINE, log=sandbox.root / "first.log", **WANDB)
    rerun_log = sandbox.root / "rerun.log"
    started: list[subprocess.Popen] = [first]
    pids: list[int] = []
    try:
        old_pid = wait_until(lambda: held_jobs(store), "the first run's job to start")[0]["pid"]
        pids.append(old_pid)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert alive(old_pid), "the killed run's job is still running (held)"

        results = sandbox.root / "results.json"
        rerun = sandbox.start(*args, module=HELD_PIPELINE, results=results, log=rerun_log, **WANDB)
        started.append(rerun)
        wait_until(lambda: "waiting for the previous job" in read(rerun_log) or len(held_jobs(store)) > 1
                   or rerun.poll() is not None, "the rerun to reach the stage")
        assert len(held_jobs(store)) == 1, "the rerun submitted a job while the killed run's was running"
        assert f"waiting for the previous job (pid {old_pid}@" in read(rerun_log), read(rerun_log)[-3000:]
        time.sleep(2.0)
        assert rerun.poll() is None and len(held_jobs(store)) == 1, "it keeps waiting while that job runs"

        release.touch()  # the old job finishes the stage now
        assert rerun.wait(timeout=300) == 0, read(rerun_log)[-3000:]
        wait_until(lambda: not alive(old_pid), "the old job to end", timeout=30)
    finally:
        release.touch()
        stop(started, pids)

    assert [entry["pid"] for entry in held_jobs(store)] == [old_pid], "one job ran: the killed run's"
    [result] = json.loads(results.read_text())
    assert result["stage"] == HELD.id and result["status"] == "reattached" and result["artifact"] == "toy-held:v1"
    version = store.latest("toy-held")
    assert version is not None and version.digest == result["digest"]
    manifest = store.read_manifest(version.uri)
    assert manifest is not None and manifest.metadata["pid"] == old_pid, "the published output is the old job's"
    assert versions(store) == {"toy-held": 1}
    assert registry_problems(store) == [], "published once, digests verified"
    log = read(rerun_log)
    assert "finished it; nothing to submit" in log
    assert "submitting through" not in log, "the rerun submitted nothing"
    [record] = [store.read_record(path.stem) for path in Path(store.root, "_runs").glob("*.json")]
    assert record is not None and record.attempt == 1, "one submission recorded"


@pytest.mark.timeout(900)
def test_a_job_started_by_the_killed_run_does_no_work(prefect_api: str, isolated: Path) -> None:
    """The window where the killed run's job is started but has not reached its lock: the rerun
    finds no job to wait for and submits; the old job then finds its orchestrator gone."""
    sandbox = Sandbox(isolated / "gated", prefect_api)
    store = sandbox.store
    gate = sandbox.root / "gate"
    args = (f"toy/held:gate={gate}",)

    def gated() -> list[int]:
        return [int(p.suffix[1:]) for p in sandbox.root.glob("gate.*")]

    first = sandbox.start(*args, module=HELD_PIPELINE, log=sandbox.root / "first.log", **WANDB)
    rerun_log = sandbox.root / "rerun.log"
    started: list[subprocess.Popen] = [first]
    pids: list[int] = []
    try:
        [old_pid] = wait_until(gated, "the first run's job to start")
        pids.append(old_pid)
        first.send_signal(signal.SIGKILL)
        first.wait()

        results = sandbox.root / "results.json"
        rerun = sandbox.start(*args, module=HELD_PIPELINE, results=results, log=rerun_log, **WANDB)
        started.append(rerun)
        wait_until(lambda: len(gated()) == 2 or rerun.poll() is not None, "the rerun's job to start")
        [new_pid] = [pid for pid in gated() if pid != old_pid]
        pids.append(new_pid)
        assert alive(old_pid) and alive(new_pid), "both jobs are there, neither has reached its lock"

        gate.touch()  # both go on
        assert rerun.wait(timeout=300) == 0, read(rerun_log)[-3000:]
        wait_until(lambda: not alive(old_pid), "the old job to stop", timeout=30)
    finally:
        gate.touch()
        stop(started, pids)

    jobs = held_jobs(store)
    assert [entry["pid"] for entry in jobs] == [new_pid], "only the rerun's job did any work"
    assert jobs[0]["overlaps"] == [] and not jobs[0]["output_done"]
    [result] = json.loads(results.read_text())
    assert result["status"] == "ran" and result["artifact"] == "toy-held:v1"
    manifest = store.read_manifest(store.resolve("toy-held").uri)
    assert manifest is not None and manifest.metadata["pid"] == new_pid
    assert versions(store) == {"toy-held": 1}
    assert registry_problems(store) == []
    job_logs = "".join(read(p) for p in Path(sandbox.root, "nemorun").rglob("*.log"))
    assert f"orchestrator {first.pid} is gone; not starting" in job_logs, "the old job stopped at its lock"

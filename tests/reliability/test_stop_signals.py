"""`kill <pid>` or Ctrl-C stops a run: the orchestrator exits, its job stops, the flow run is
Crashed, and a rerun resumes the job's training from its checkpoint.

(NeMo-Run's local scheduler installs SIGTERM/SIGINT handlers of its own that raise an ordinary
exception; Prefect took that for a task failure, retried it and carried on with the job.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import alive as _alive, children as _children, cmdline
from tests.reliability.runs import Sandbox, journal
from tests.reliability.toy_pipeline import FLOW_NAME

#: Training long enough (60 s) that only a stopped job leaves it unfinished.
OVERRIDES = ("toy/produce:steps=2", "toy/train:steps=240", "toy/train:sleep=0.25")


def _job_pids(sandbox: Sandbox) -> list[int]:
    """The toy training job's processes (recorded by the journal when each job starts)."""
    return [entry["pid"] for entry in journal(sandbox.store).get("toy/train", [])]


@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_a_signal_stops_the_run_and_its_job(tmp_path: Path, prefect_api: str, sig: signal.Signals) -> None:
    sandbox = Sandbox(tmp_path, prefect_api)
    # A process started in its own session has SIGINT at its default, like a terminal's.
    orchestrator = sandbox.start(*OVERRIDES, WANDB_MODE="disabled")
    deadline = time.monotonic() + 240
    while not list((tmp_path / "store" / "_work" / "toy-train").glob("*/checkpoints/step_*/COMPLETE")):
        assert orchestrator.poll() is None, sandbox.log()[-3000:]
        assert time.monotonic() < deadline, "the training job made no checkpoint"
        time.sleep(0.2)
    (job,) = _job_pids(sandbox)
    assert _alive(job)

    signalled = time.monotonic()
    orchestrator.send_signal(sig)
    code = orchestrator.wait(timeout=60)
    assert code != 0, "the run was stopped, not finished"
    print(f"{sig.name}: the orchestrator exited {code} after {time.monotonic() - signalled:.1f} s")
    deadline = time.monotonic() + 30
    while _alive(job) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(job), "the job outlived its stopped orchestrator"
    assert not list((tmp_path / "store" / "toy-train").glob("*/manifest.json"))
    assert len(_job_pids(sandbox)) == 1, "the stopped task was not retried"

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
    mine = [r for r in runs if r.state is not None and not r.state.is_completed()]
    assert mine and all(r.state.is_crashed() or r.state.is_cancelled() or r.state.is_failed() for r in mine)

    code, results = sandbox.run(*OVERRIDES, WANDB_MODE="disabled")
    assert code == 0, sandbox.log()[-3000:]
    assert {r["stage"]: r["status"] for r in results}["toy/train"] == "ran"
    assert "resumed from step" in sandbox.log()


def test_sigterm_leaves_no_temporary_prefect_server_behind(tmp_path: Path, prefect_api: str) -> None:
    """Without a configured server Prefect starts a temporary one as a child process; `kill`
    must stop it too (it is stopped by an exit handler, which a death by signal skips)."""
    sandbox = Sandbox(tmp_path, prefect_api)
    (tmp_path / "home").mkdir()
    log = (tmp_path / "nano3.log").open("w")
    orchestrator = subprocess.Popen(
        [sys.executable, "-m", "flows.nano3", "--stages", "data_prep/pretrain"], cwd=tmp_path / "home",
        env=sandbox.env(PREFECT_API_URL=None, WANDB_MODE="disabled"), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while "phase=" not in (tmp_path / "nano3.log").read_text():
        assert orchestrator.poll() is None, (tmp_path / "nano3.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the data prep job reported no progress"
        time.sleep(0.5)
    children = _children(orchestrator.pid)
    assert any("uvicorn" in cmdline(c) for c in children)

    orchestrator.send_signal(signal.SIGTERM)
    assert orchestrator.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [c for c in children if _alive(c)], "a child of the stopped run is still alive"

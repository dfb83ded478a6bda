"""A job that fails once is retried by Prefect with backoff, and the retry resumes from the last
complete checkpoint, not from step 0.

Twice: the toy training recipe failing at an injected step (fast; the resume is read from the
Prefect task run's states, the logs and the manifest), and the real pretraining recipe whose
job process is SIGKILLed once its first checkpoint is complete.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from prefect import flow

from blocks.profiles import LocalProfile
from tasks.artifacts import ArtifactStore
from tasks.job_config import build_job_config, parse_overrides
from tasks.stages import STAGES_BY_ID
from tests.reliability.runs import Sandbox, journal


def task_run(name: str):  # noqa: ANN201 - TaskRun
    """The one task run of that name on the module's server (each test runs other stages)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        (run,) = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))
        return run


def task_run_states(name: str) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sorted(client.read_task_run_states(task_run(name).id), key=lambda s: s.timestamp)


def prefect_logs(name: str) -> list[str]:
    """The log lines of that task run, its job's included, in order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.client.schemas.sorting import LogSort

    only = LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run(name).id]))
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        while batch := client.read_logs(log_filter=only, limit=200, offset=len(lines), sort=LogSort.TIMESTAMP_ASC):
            lines += [log.message for log in batch]
    return lines


def assert_retried_with_backoff(task_run: str) -> None:
    states = task_run_states(task_run)
    names = [s.name for s in states]
    assert names == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"], names
    waiting = [s for s in states if s.name == "AwaitingRetry"]
    assert len(waiting) == 1, names
    backoff = waiting[0].state_details.scheduled_time - waiting[0].timestamp
    assert backoff.total_seconds() > 1, f"the retry was scheduled {backoff} later: a backoff, not at once"


def test_a_failing_training_job_is_retried_and_resumes_from_its_checkpoint(prefect_api: str, isolated: Path) -> None:
    sandbox = Sandbox(isolated, prefect_api)
    code, results = sandbox.run("toy/train:steps=6", "toy/train:fail_at=4")
    assert code == 0, sandbox.log()[-3000:]
    assert [r["status"] for r in results] == ["ran", "ran", "ran"]
    assert_retried_with_backoff("toy/train")

    store = sandbox.store
    model = store.resolve("toy-model:latest")
    manifest = store.read_manifest(model.uri)
    assert manifest is not None and manifest.metadata["resumed_from"] == 3, "the retry began after step 3, not at 0"
    assert model.metrics == {"weight": 6 * 6}, "the resumed training state is the checkpoint's"
    record = store.read_record(model.cache_key)
    assert record is not None and record.attempt == 2
    assert len(journal(store)["toy/train"]) == 2, "two jobs: the failed one and its retry"
    logs = prefect_logs("toy/train")
    failed = logs.index(next(line for line in logs if "injected failure at step 4" in line))
    resumed = logs.index(next(line for line in logs if "resumed from step 3" in line))
    assert failed < resumed
    after = [int(m.group(1)) for line in logs[resumed:] if (m := re.match(r"step (\d+)/6 ", line))]
    assert after[:3] == [4, 5, 6], "the retry's progress starts at step 4"


class KillOnce(threading.Thread):
    """SIGKILLs the processes of a stage's job once its first checkpoint is complete."""

    def __init__(self, store: ArtifactStore, slug: str, script: str) -> None:
        super().__init__(daemon=True)
        self.marker = Path(store.root, "_work", slug)
        self.script = script
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if list(self.marker.glob("*/checkpoints/step_*/COMPLETE")):
                for pid in self.job_pids():
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                if self.killed:
                    return
            time.sleep(0.1)

    def job_pids(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if self.script in command and str(self.marker) in command:
                    found.append(int(entry.name))
        return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_pretraining_killed_mid_run_resumes_from_its_checkpoint(prefect_api: str, isolated: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import execute_stages

    monkeypatch.setenv("WANDB_MODE", "disabled")
    from nemo_run.config import set_nemorun_home

    set_nemorun_home(str(isolated / "nemorun"))
    store = ArtifactStore(str(isolated / "store"))
    sizes = {
        "data_prep/pretrain": ("corpus.max_bytes=300000", "tokenizer.vocab_size=1024"),
        "pretrain": ("train.train_iters=30", "train.save_interval=10", "train.eval_interval=30", "train.log_interval=5"),
    }
    jobs = [build_job_config(STAGES_BY_ID[stage], "tiny", profile=LocalProfile(), profile_name="local",
                             profile_origin="test", overrides=parse_overrides(overrides))
            for stage, overrides in sizes.items()]

    @flow
    def pretraining(jobs: list) -> list:
        return execute_stages(jobs, store, None)

    killer = KillOnce(store, "pretrain", "pretrain/train.py")
    killer.start()
    try:
        results = pretraining(jobs)
    finally:
        killer.stop.set()
    assert killer.killed, "the job was killed once its first checkpoint was complete"
    assert [r.status for r in results] == ["ran", "ran"]
    assert_retried_with_backoff("pretrain")
    record = store.read_record(results[1].artifact.cache_key)
    assert record is not None and record.attempt == 2
    logs = prefect_logs("pretrain")
    resumed = [int(m.group(1)) for line in logs if (m := re.search(r"resumed from step (\d+)", line))]
    assert len(resumed) == 1 and resumed[0] >= 10, logs[-40:]
    start = logs.index(next(line for line in logs if "resumed from step" in line))
    after = [int(m.group(1)) for line in logs[start:] if (m := re.match(r"step (\d+)/30 ", line))]
    assert after and min(after) > resumed[0], "the retry's steps continue after the checkpoint's"
    manifest = store.read_manifest(results[1].artifact.uri)
    assert manifest is not None and any(f.path.endswith(".safetensors") for f in manifest.files)

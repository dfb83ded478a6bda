"""Stages on a real Slurm (slurmctld, slurmd, slurmdbd) through the slurm profile and the stage task.

What users of Slurm pipeline tools ask for, checked against sacct: logs while waiting, a failing
job failing the stage with its log, GPUs from GRES, a killed orchestrator re-attaching to its job
instead of submitting another, a stage longer than the time limit finishing over chained jobs,
and the controller (slurmctld) or accounting (slurmdbd) restarted while a stage's job runs: each
is stopped while the job runs, stays down past the job's end, and comes back; the stage's wait
outlasts the failed scheduler queries (retrying with backoff, saying so in the run's log), sees
the job's true end, and never submits a second job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from prefect import flow

from local_slurm import SlurmCluster, start_daemon_again, stop_daemon
from tasks.artifacts import ArtifactStore
from tasks.stage_task import StageFailed, prepare_stage, run_stage
from tests.infra.slurm_commands import sacct_row, slurm_env
from tests.infra.slurm_stages import CONSUME, PRODUCE, slurm_job, slurm_toy_flow

PROJECT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def store(isolated: Path) -> ArtifactStore:
    return ArtifactStore(str(isolated / "store"))


def job_dir(isolated: Path) -> Path:
    return isolated / "nemorun" / "experiments"


def prefect_logs() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        return "\n".join(log.message for log in client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC))


def test_stages_run_as_slurm_jobs_and_stream_their_logs(cluster, store: ArtifactStore, isolated: Path) -> None:  # noqa: ANN001
    results = slurm_toy_flow([slurm_job(PRODUCE, job_dir(isolated)), slurm_job(CONSUME, job_dir(isolated))], store)
    assert [r.status for r in results] == ["ran", "ran"]
    assert results[1].artifact.metrics == {"total": 6}
    for result in results:
        record = store.read_record(result.artifact.cache_key)
        assert record is not None and record.executor == "slurm" and record.job_id
        assert sacct_row(cluster, record.job_id) == {"State": "COMPLETED", "ExitCode": "0:0"}
    assert "step 3/3 value=6" in prefect_logs()  # the job's progress, read from its Slurm log while it ran


def test_independent_stages_run_as_slurm_jobs_at_the_same_time(cluster, store: ArtifactStore, isolated: Path) -> None:  # noqa: ANN001
    """Two stages that read nothing from each other: both jobs are submitted at once (the default
    on a scheduler) and Slurm runs them side by side, by sacct's start and end times."""
    other = dataclasses.replace(PRODUCE, id="toy/produce-more", artifact="toy-more-numbers")
    jobs = [slurm_job(PRODUCE, job_dir(isolated), "sleep=2.0"), slurm_job(other, job_dir(isolated), "sleep=2.0", "scale=3")]
    results = slurm_toy_flow(jobs, store)
    assert [r.status for r in results] == ["ran", "ran"]
    spans = []
    for result in results:
        record = store.read_record(result.artifact.cache_key)
        assert record is not None and record.job_id
        row = sacct_row(cluster, record.job_id, "State,Start,End")
        assert row["State"] == "COMPLETED"
        spans.append((datetime.fromisoformat(row["Start"]), datetime.fromisoformat(row["End"])))
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans


def test_a_failing_job_fails_the_stage_with_its_log(cluster, store: ArtifactStore, isolated: Path) -> None:  # noqa: ANN001
    prepared = prepare_stage(slurm_job(PRODUCE, job_dir(isolated), "fail_at=1"), store, {})

    @flow
    def failing() -> None:
        run_stage.with_options(retries=0)(prepared, store, None)

    with pytest.raises(StageFailed) as info:
        failing()
    record = store.read_record(prepared.cache_key)
    assert record is not None and record.job_id
    assert f"job {record.job_id} ended FAILED without a manifest" in str(info.value)
    assert "injected failure at step 1" in str(info.value)
    assert sacct_row(cluster, record.job_id) == {"State": "FAILED", "ExitCode": "3:0"}
    assert not Path(prepared.output_url, "manifest.json").exists()


def test_a_gpu_stage_gets_its_gpus_from_gres(cluster, store: ArtifactStore, isolated: Path) -> None:  # noqa: ANN001
    (result,) = slurm_toy_flow([slurm_job(PRODUCE, job_dir(isolated), gpus_per_node=1)], store)
    manifest = store.read_manifest(result.artifact.uri)
    assert manifest is not None and manifest.metadata["cuda_visible_devices"] == "0"
    record = store.read_record(result.artifact.cache_key)
    assert record is not None and record.job_id
    assert "gres/gpu=1" in sacct_row(cluster, record.job_id, "State,AllocTRES")["AllocTRES"]


def squeue_state(cluster: SlurmCluster, job_id: str) -> str:
    shown = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=slurm_env(cluster),
                           capture_output=True, text=True, timeout=30)
    return shown.stdout.strip()


def sacct_jobs(cluster, name: str) -> list[str]:  # noqa: ANN001
    shown = subprocess.run(["sacct", "-n", "-X", "-P", "--name", name, "-o", "JobID,State", "-S", "now-1hour"],
                           env=slurm_env(cluster), capture_output=True, text=True, timeout=30)
    return [line for line in shown.stdout.splitlines() if line]


def test_a_killed_orchestrator_reattaches_to_its_running_job(cluster, store: ArtifactStore, isolated: Path,
                                                             prefect_api: str) -> None:  # noqa: ANN001
    overrides = ("steps=20", "sleep=0.5", "scale=11")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(PROJECT)}
    orchestrator = subprocess.Popen(
        [sys.executable, "-m", "tests.infra.slurm_stages", store.root, str(job_dir(isolated)), *overrides],
        cwd=isolated, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    runs = Path(store.root, "_runs")
    deadline = time.monotonic() + 120
    # The record is written before the job is submitted, and gets the job's id the moment sbatch
    # answers: kill then, before the orchestrator has asked the scheduler anything.
    while not (records := [json.loads(p.read_text()) for p in runs.glob("*.json")]) or not records[0]["job_id"]:
        assert orchestrator.poll() is None and time.monotonic() < deadline, "no submission recorded"
        time.sleep(0.05)
    orchestrator.send_signal(signal.SIGKILL)
    orchestrator.wait()
    (record_file,) = runs.glob("*.json")
    (record,) = records
    # The job is Slurm's, not a child of the killed process: it keeps running.
    assert squeue_state(cluster, record["job_id"]) in {"PENDING", "RUNNING"}
    (result,) = slurm_toy_flow([slurm_job(PRODUCE, job_dir(isolated), *overrides)], store)
    assert result.status == "reattached"
    assert result.artifact.metrics["sum"] == 11 * sum(range(20))
    after = json.loads(record_file.read_text())
    assert after["job_id"] == record["job_id"] and after["attempt"] == 1, "no second submission"
    assert [line.split("|")[0] for line in sacct_jobs(cluster, "root-root.toy-produce")].count(record["job_id"]) == 1
    assert sacct_row(cluster, record["job_id"]) == {"State": "COMPLETED", "ExitCode": "0:0"}


@pytest.mark.timeout(900)
def test_a_stage_longer_than_the_time_limit_finishes_over_chained_jobs(cluster, store: ArtifactStore,
                                                                       isolated: Path) -> None:  # noqa: ANN001
    # One minute of walltime per job (Slurm's smallest), 100 s of work with a checkpoint per step.
    (result,) = slurm_toy_flow(
        [slurm_job(PRODUCE, job_dir(isolated), "steps=100", "sleep=1.0", "scale=5", time="00:01:00")], store
    )
    assert result.status == "ran"
    assert result.artifact.metrics["sum"] == 5 * sum(range(100))
    record = store.read_record(result.artifact.cache_key)
    assert record is not None and record.attempt >= 2, "the time limit stopped the first job"
    logs = prefect_logs()
    assert "reached its time limit; submitting job 2" in logs
    assert "resumed from step" in logs
    states = [sacct_row(cluster, str(job))["State"] for job in range(int(record.job_id) - record.attempt + 1,
                                                                       int(record.job_id) + 1)]
    assert states[-1] == "COMPLETED" and all(s == "TIMEOUT" for s in states[:-1]), states


#: The job: STEPS steps of one second. The daemon goes down DOWN_AFTER seconds into it and stays
#: down for DOWN_FOR seconds, so the job ends while nobody can tell the stage so.
STEPS, DOWN_AFTER, DOWN_FOR = 12, 4.0, 25.0


class DaemonOutage(threading.Thread):
    """Once the stage's job runs: stop `daemon`, wait, start it again; remembers what it did."""

    def __init__(self, cluster: SlurmCluster, store: ArtifactStore, daemon: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.store, self.name_ = cluster, store, daemon
        self.job_id: str | None = None
        self.stopped = False
        self.stopped_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 180
            runs = Path(self.store.root, "_runs")
            while self.job_id is None or squeue_state(self.cluster, self.job_id) != "RUNNING":
                assert time.monotonic() < deadline, "the stage's job never ran"
                records = [self.store.read_record(p.stem) for p in runs.glob("*.json")] if runs.is_dir() else []
                self.job_id = next((r.job_id for r in records if r and r.job_id), None)
                time.sleep(0.3)
            time.sleep(DOWN_AFTER)
            self.stopped_at = time.time()
            self.stopped = stop_daemon(Path(self.cluster.dir), self.name_)
            time.sleep(DOWN_FOR)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            start_daemon_again(Path(self.cluster.dir), self.name_)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("daemon", ["slurmctld", "slurmdbd"])
def test_a_restarted_slurm_daemon_neither_fails_nor_repeats_the_stage(cluster, isolated: Path, daemon: str) -> None:  # noqa: ANN001
    store = ArtifactStore(str(isolated / "store"))
    overrides = (f"steps={STEPS}", "sleep=1.0", f"scale={3 if daemon == 'slurmctld' else 7}")
    outage = DaemonOutage(cluster, store, daemon)
    outage.start()
    (result,) = slurm_toy_flow([slurm_job(PRODUCE, job_dir(isolated), *overrides)], store)
    outage.join(timeout=120)
    assert outage.error is None, outage.error
    assert outage.stopped, f"{daemon} was not running when the fault was injected"
    assert result.status == "ran"
    assert result.artifact.metrics["sum"] == int(overrides[2].split("=")[1]) * sum(range(STEPS))
    store.verify(PRODUCE.artifact, result.artifact.uri, store.read_manifest(result.artifact.uri))
    record = store.read_record(result.artifact.cache_key)
    assert record is not None and record.job_id == outage.job_id and record.attempt == 1, "one submission"
    since = [i for i in (line.split("|")[0] for line in sacct_jobs(cluster, "root-root.toy-produce"))
             if int(i) >= int(outage.job_id)]
    assert since == [outage.job_id], f"sacct shows more jobs of the stage: {since}"
    row = sacct_row(cluster, outage.job_id, "State,ExitCode,End")
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0")
    ended = datetime.fromisoformat(row["End"]).timestamp()
    assert ended >= outage.stopped_at - 1, "the job ended before the fault: nothing was tested"
    if daemon == "slurmdbd":  # sacct, NeMo-Run's only source of job states, failed meanwhile
        logs = prefect_logs()
        assert f"the scheduler did not answer about job {outage.job_id} (sacct: error:" in logs
        assert f"the scheduler answers again: job {outage.job_id} is SUCCEEDED" in logs

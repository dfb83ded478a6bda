"""The Slurm controller (slurmctld) and accounting (slurmdbd) restarted while a stage's job runs.

Each is stopped while the job runs, stays down past the job's end, and comes back. The stage's
wait must outlast the failed scheduler queries (retrying with backoff, saying so in the run's
log), see the job's true end once the scheduler answers again, and never submit a second job:
sacct shows one job for the stage and the submission record its first attempt.
"""

from __future__ import annotations

import subprocess
import threading
from datetime import datetime
import time
from pathlib import Path

import pytest

from local_slurm import SlurmCluster, start_daemon_again, stop_daemon
from tasks.artifacts import ArtifactStore
from tests.infra.slurm_commands import sacct_row, slurm_env
from tests.infra.slurm_stages import PRODUCE, slurm_job, slurm_toy_flow
from tests.infra.test_slurm_stages import job_dir, prefect_logs, sacct_jobs

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow, pytest.mark.timeout(600)]

#: The job: STEPS steps of one second. The daemon goes down DOWN_AFTER seconds into it and stays
#: down for DOWN_FOR seconds, so the job ends while nobody can tell the stage so.
STEPS, DOWN_AFTER, DOWN_FOR = 12, 4.0, 25.0


def squeue_state(cluster: SlurmCluster, job_id: str) -> str:
    shown = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=slurm_env(cluster),
                           capture_output=True, text=True, timeout=30)
    return shown.stdout.strip()


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

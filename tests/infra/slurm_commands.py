"""sbatch and sacct as a user types them, pointed at a test cluster through SLURM_CONF."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from local_slurm import SlurmCluster


def slurm_env(cluster: SlurmCluster) -> dict[str, str]:
    return {**os.environ, **cluster.env}


def sbatch(cluster: SlurmCluster, *args: str, cwd: Path) -> str:
    """Submit as a user does; return the job id."""
    submitted = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=slurm_env(cluster),
                               capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().split(";")[0]


def sacct_row(cluster: SlurmCluster, job_id: str, fields: str = "State,ExitCode",
              timeout: float = 90) -> dict[str, str]:
    """The job's allocation row in accounting once it has ended.

    Right after a job ends, sacct may show no row (or a RUNNING one) for a second or two.
    """
    names = fields.split(",")
    deadline = time.monotonic() + timeout
    while True:
        shown = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", fields], env=slurm_env(cluster),
                               capture_output=True, text=True, timeout=30)
        lines = shown.stdout.strip().splitlines()
        if lines:
            row = dict(zip(names, lines[0].split("|")))
            if row.get("State", "") not in {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", ""}:
                return row
        assert time.monotonic() < deadline, f"job {job_id} did not end within {timeout} s: {shown.stdout}{shown.stderr}"
        time.sleep(0.5)

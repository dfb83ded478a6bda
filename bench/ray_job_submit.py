"""What submitting a `ray` stage costs as NeMo-Run's SlurmRayJob, against an Experiment running
recipes/nano3/ray_cluster.py, on a local one-node Slurm.

    .venv/bin/python bench/ray_job_submit.py [--runs 5]

Starts its own Slurm (scripts/dev/local_slurm.py) and, for each way, submits the toy `ray` stage
of tests/infra/test_slurm_ray_job.py `--runs` times with distinct configs, detached: the time from
the call to the returned outcome (the record written, packaging, sbatch, the job id recorded, the
first state asked). The Ray jobs ask for an image and this Slurm has no pyxis, so they fail once
running: only their submission is timed. Prints the medians and the ratio. Stops what it started.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "scripts" / "dev"))

from local_slurm import start_slurm, stop_slurm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nano3-rayjob-"))
    slurm = start_slurm(root / "slurm", gpus=0)
    os.environ.update(slurm.env)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ["NEMORUN_HOME"] = str(root / "nemorun")
    sys.stdin = open(os.devnull)  # noqa: SIM115 - NeMo-Run's invoke calls mirror stdin
    from nemo_run.config import set_nemorun_home

    from tasks.artifacts import ArtifactStore
    from tasks.stage_task import prepare_stage
    from tasks.submit import submit_and_wait
    from tests.infra.slurm_stages import slurm_job
    from tests.infra.test_slurm_ray_job import RAY_PRODUCE

    set_nemorun_home(str(root / "nemorun"))
    store = ArtifactStore(str(root / "store"))
    job_dir = root / "nemorun" / "experiments"
    timings: dict[str, list[float]] = {}
    try:
        for way, fields in (("Experiment + ray_cluster.py", {}), ("SlurmRayJob", {"container_image": "bench.sqsh"})):
            for n in range(options.runs):
                scale = 10 * n + (2 if fields else 3)  # a config (so a cache key) of its own each time
                job = slurm_job(RAY_PRODUCE, job_dir, f"scale={scale}", **fields)
                prepared = prepare_stage(job, store, {})
                started = time.perf_counter()
                outcome = submit_and_wait(job, resolved_config=prepared.resolved_yaml, cache_key=prepared.cache_key,
                                          work_dir=prepared.work_url, store=store, wandb=None, detached=True,
                                          on_line=lambda line: None)
                timings.setdefault(way, []).append(time.perf_counter() - started)
                assert outcome.job_id, f"{way}: no job id"
    finally:
        stop_slurm(root / "slurm")
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(timings["Experiment + ray_cluster.py"])
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs; {options.runs} submissions each, detached\n")
    print("| way | median s | min s | max s | vs Experiment |")
    print("|---|---|---|---|---|")
    for way, values in timings.items():
        median = statistics.median(values)
        print(f"| {way} | {median:.2f} | {min(values):.2f} | {max(values):.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()

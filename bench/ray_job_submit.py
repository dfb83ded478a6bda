"""What running a `ray` stage as NeMo-Run's SlurmRayJob costs, against an Experiment running
recipes/nano3/ray_cluster.py, on a local one-node Slurm.

    .venv/bin/python bench/ray_job_submit.py [--runs 3]

Starts its own Slurm (scripts/dev/local_slurm.py, with --host-containers so that NeMo-Run's
ray.sub can run) and, for each way, runs the pretraining data prep of backend megatron (1 MB of
corpus, encoded by Ray tasks on the job's Ray cluster) `--runs` times, each into a store of its
own. Timed: the submission (the call until the job id is recorded and the first state asked,
detached), the whole stage (submission to the job's end, attached) and how long the node stays
busy after the stage has ended (squeue still listing the job: COMPLETING). Checks that every run
gives the same bytes. Prints medians and ratios. Stops what it started.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "scripts" / "dev"))

from local_slurm import start_slurm, stop_slurm  # noqa: E402

WAYS = (("Experiment + ray_cluster.py", {}), ("SlurmRayJob", {"container_image": "bench.sqsh", "cpus_per_task": 2}))


def node_free_after(env: dict[str, str]) -> float:
    started = time.perf_counter()
    while subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nano3-rayjob-", dir="/tmp"))
    slurm = start_slurm(root / "slurm", gpus=0, host_containers=True)
    os.environ.update(slurm.env)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ["NEMORUN_HOME"] = str(root / "nemorun")
    env = dict(os.environ)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - NeMo-Run's invoke calls mirror stdin
    from nemo_run.config import set_nemorun_home

    from tasks.artifacts import ArtifactStore
    from tasks.stage_task import prepare_stage
    from tasks.submit import submit_and_wait
    from tests.infra.slurm_stages import slurm_profile
    from tests.infra.test_slurm_ray_job import prep_job

    set_nemorun_home(str(root / "nemorun"))
    job_dir = root / "nemorun" / "experiments"
    timings: dict[tuple[str, str], list[float]] = {}
    digests = set()
    try:
        for n in range(options.runs):
            for way, fields in WAYS:
                work = root / f"run-{n}-{len(fields)}"
                work.mkdir()
                store = ArtifactStore(str(work / "store"))
                ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths are capped
                job = prep_job(work, "ray", slurm_profile(job_dir, env_vars={"RAY_TEMP_DIR": ray_temp}, **fields),
                               "local-slurm")
                prepared = prepare_stage(job, store, {})

                def submit(detached: bool) -> object:
                    return submit_and_wait(job, resolved_config=prepared.resolved_yaml, cache_key=prepared.cache_key,
                                           work_dir=prepared.work_url, store=store, wandb=None, detached=detached,
                                           on_line=lambda line: None)

                started = time.perf_counter()
                submit(detached=True)
                timings.setdefault((way, "submission"), []).append(time.perf_counter() - started)
                outcome = submit(detached=False)  # re-attaches and follows the job to its end
                timings.setdefault((way, "stage"), []).append(time.perf_counter() - started)
                assert outcome.state == "SUCCEEDED", f"{way}: {outcome.state} {outcome.log_tail[-5:]}"
                timings.setdefault((way, "node busy after"), []).append(node_free_after(env))
                manifest = store.read_manifest(prepared.output_url)
                assert manifest is not None, f"{way}: no manifest"
                digests.add(tuple(sorted((f.path, f.sha256) for f in manifest.files)))
                shutil.rmtree(ray_temp, ignore_errors=True)
    finally:
        stop_slurm(root / "slurm")
        shutil.rmtree(root, ignore_errors=True)
    assert len(digests) == 1, "every run gives the same bytes"
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs; {options.runs} runs each way; same bytes every run\n")
    print("| measure | way | median s | min s | max s | vs Experiment |")
    print("|---|---|---|---|---|---|")
    for measure in ("submission", "stage", "node busy after"):
        base = statistics.median(timings[(WAYS[0][0], measure)])
        for way, _ in WAYS:
            values = timings[(way, measure)]
            median = statistics.median(values)
            ratio = f"{median / base:.2f}x" if base > 0.05 else "-"
            print(f"| {measure} | {way} | {median:.2f} | {min(values):.2f} | {max(values):.2f} | {ratio} |")


if __name__ == "__main__":
    main()

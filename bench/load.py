"""20 toy pipeline runs at once against a PostgreSQL-backed Prefect server, their jobs on a local Slurm.

    .venv/bin/python bench/load.py [--distinct 10 --pairs 5]

Starts its own PostgreSQL, Prefect server and one-node Slurm (scripts/dev/local_*.py), runs
tests/infra/load_runs.py (distinct configs plus identical pairs, one store), and prints the API
latency while the runs ran (a flow-run listing every half second), the runs' wall times, and
one run alone on the same server and cluster as the baseline. Stops what it started.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "scripts" / "dev"))

from local_postgres import start_postgres, stop_postgres  # noqa: E402
from local_slurm import start_slurm, stop_slurm  # noqa: E402

from tests.infra.load_runs import run_load  # noqa: E402
from tests.prefect_server import PrefectServer  # noqa: E402
from tests.reliability.runs import journal, registry_problems  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distinct", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=5)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nano3-load-"))
    postgres_dir, slurm_dir = Path(tempfile.mkdtemp(prefix="nano3-load-pg-")), root / "slurm"
    postgres = start_postgres(postgres_dir)
    slurm = start_slurm(slurm_dir, gpus=0)
    server = PrefectServer(root / "prefect", database_url=postgres.url)
    try:
        api = server.start()
        env = {**slurm.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "WANDB_MODE": "disabled"}
        alone = run_load(root / "alone", api, env, distinct=1, pairs=0)
        load = run_load(root / "load", api, env, distinct=options.distinct, pairs=options.pairs)
    finally:
        server.stop()
        stop_slurm(slurm_dir)
        stop_postgres(postgres_dir)
        shutil.rmtree(postgres_dir, ignore_errors=True)
    failed = [run.name for run in load.runs if run.process is None or run.process.returncode != 0]
    jobs = {stage: len(starts) for stage, starts in journal(load.store).items()}
    walls = [run.wall for run in load.runs if run.wall is not None]
    base_latency = statistics.median(alone.latencies) if alone.latencies else float("nan")
    base_wall = alone.runs[0].wall or float("nan")
    print(f"\n{platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"{len(load.runs)} runs ({options.distinct} distinct, {options.pairs} identical pairs)\n")
    print("| | one run alone | all at once | ratio |")
    print("|---|---|---|---|")
    print(f"| API latency, median (s) | {base_latency:.3f} | {statistics.median(load.latencies):.3f} | "
          f"{statistics.median(load.latencies) / base_latency:.1f}× |")
    print(f"| API latency, 95th percentile (s) | {percentile(alone.latencies, 0.95):.3f} | "
          f"{percentile(load.latencies, 0.95):.3f} | |")
    print(f"| API latency, max (s) | {max(alone.latencies):.3f} | {max(load.latencies):.3f} | |")
    print(f"| run wall time (s), min / median / max | {base_wall:.0f} | {min(walls):.0f} / "
          f"{statistics.median(walls):.0f} / {max(walls):.0f} | {statistics.median(walls) / base_wall:.1f}× |")
    print(f"\nfailed runs: {failed or 'none'}; API calls failed: {load.failures}; jobs per stage: {jobs}; "
          f"registry problems: {registry_problems(load.store) or 'none'}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The pipeline as a graph against one stage at a time: wall time, and how many ran at once.

    .venv/bin/python bench/stage_graph.py --size micro --parallel 3            # this machine
    .venv/bin/python bench/stage_graph.py --size tiny --runs 1 -- -r my-slurm   # a profile, e.g. the local Slurm

Each repetition runs `python -m flows.nano3 <size> --max-parallel 1` and `--max-parallel N` in
fresh folders (own HOME, store, NeMo-Run home, Prefect home), alternating which goes first. The
Prefect server each run reports to (the local one it starts) is asked for its task runs: the
stages' start and end times give the most stages that ran at once and the sum of the stages'
own times. Prints a Markdown table for docs/performance.md; the ratio graph / one at a time is
what compares across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.orchestration import SIZES, environment, timed  # noqa: E402
from blocks.prefect_server import stop_local_servers  # noqa: E402


@dataclass
class GraphRun:
    wall: float
    #: The most stages running at the same moment (Prefect's task runs' start and end times).
    most_at_once: int
    #: The stages' own wall times, summed.
    stage_seconds: float


def task_runs(log: Path) -> list[tuple[datetime, datetime]]:
    """(start, end) of every stage task run of the run whose log this is, from its Prefect server."""
    url = next(line.split("UI at ", 1)[1].split()[0] for line in log.read_text().splitlines() if "UI at " in line)
    request = urllib.request.Request(f"{url}/api/task_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.load(response)
    return [(datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"]))
            for r in runs if r["start_time"] and r["end_time"]]


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def one_run(root: Path, size: list[str], parallel: int, extra: list[str]) -> GraphRun:
    root.mkdir(parents=True)
    (root / "home").mkdir()
    env = dict(environment(root), PYTHONPATH=str(PROJECT), NANO3_LOCAL_SERVER_IDLE_MINUTES="5")
    if os.environ.get("NEMOTRON_ENV_FILE"):  # the profiles of `-r PROFILE` (the runs' folders have no env.toml)
        env["NEMOTRON_ENV_FILE"] = os.environ["NEMOTRON_ENV_FILE"]
    log = root / "flow.log"
    try:
        timing = timed([sys.executable, "-m", "flows.nano3", *size, *extra, "--max-parallel", str(parallel)],
                       cwd=root / "home", env=env, log=log)
        intervals = task_runs(log)
    finally:
        stop_local_servers(root / "home" / ".prefect")
    seconds = sum((end - start).total_seconds() for start, end in intervals)
    return GraphRun(timing.wall, most_at_once(intervals), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each order")
    parser.add_argument("--size", choices=sorted(SIZES), default="micro")
    parser.add_argument("--parallel", type=int, default=3, help="--max-parallel of the graph runs")
    parser.add_argument("extra", nargs="*", help="after --: more arguments of python -m flows.nano3 (-r PROFILE)")
    args = parser.parse_args()
    found: dict[int, list[GraphRun]] = {1: [], args.parallel: []}
    with tempfile.TemporaryDirectory(prefix="nano3-graph-") as scratch:
        for n in range(args.runs):
            order = [1, args.parallel] if n % 2 == 0 else [args.parallel, 1]
            for parallel in order:
                run = one_run(Path(scratch) / f"{n}-{parallel}", SIZES[args.size], parallel, args.extra)
                found[parallel].append(run)
                print(f"run {n + 1}, --max-parallel {parallel}: {run.wall:.1f} s, at most {run.most_at_once} at once",
                      file=sys.stderr, flush=True)
    spread = lambda values: " / ".join(f"{v:.1f}" for v in (min(values), statistics.median(values), max(values)))  # noqa: E731
    sequential = statistics.median(r.wall for r in found[1])
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; size "
          f"`{args.size}` {' '.join(args.extra)}; {args.runs} repetitions; load average at the end {os.getloadavg()[0]:.1f}.\n")
    print("| order | wall (s): min / median / max | stages' own time, summed (s) | most at once | median / one at a time |")
    print("|---|---|---|---|---|")
    for parallel, runs in found.items():
        label = "one at a time (`--max-parallel 1`)" if parallel == 1 else f"graph (`--max-parallel {parallel}`)"
        print(f"| {label} | {spread([r.wall for r in runs])} | {spread([r.stage_seconds for r in runs])} | "
              f"{max(r.most_at_once for r in runs)} | {statistics.median(r.wall for r in runs) / sequential:.2f} |")


if __name__ == "__main__":
    main()

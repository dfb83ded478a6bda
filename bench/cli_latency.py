"""Latency of the `nemotron` command line, as a user feels it: a fresh process per call.

    .venv/bin/python bench/cli_latency.py               # 7 runs of each command
    .venv/bin/python bench/cli_latency.py --runs 11 --breakdown
    .venv/bin/python bench/cli_latency.py --against ../other-checkout   # its dry-run too, same loop

Each command runs in a scratch folder with a Slurm profile in its env.toml and its own HOME (no
Prefect database, no NeMo-Run state), after one unmeasured warm-up call. `python -c pass`, timed
in the same loop, is the floor of any Python command on this machine at this moment: the ratio
to it is comparable across machines and loads, the seconds are not. The goal is a median of
1.0 s or less per command. Prints a Markdown table for docs/performance.md.
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
PROFILE = """
[bench-slurm]
executor = "slurm"
account = "bench"
partition = "batch"
gpus_per_node = 8
"""
COMMANDS = {
    "python -c pass (baseline)": ["-c", "pass"],
    "nemotron --help": ["--help"],
    "nemotron steps list": ["steps", "list"],
    "nemotron nano3 pretrain -c tiny -r bench-slurm -d": ["nano3", "pretrain", "-c", "tiny", "-r", "bench-slurm", "-d"],
}
#: Imports whose cumulative time the breakdown reports (python -X importtime).
BREAKDOWN = ("typer", "pydantic", "omegaconf", "flows.run_options", "prefect", "nemo_run", "nemo_run.run.experiment",
             "fiddle", "networkx", "leptonai", "torch", "chardet",
             "charset_normalizer")
#: The breakdown's row for NeMo-Run's own modules (self time, summed; their imports not counted).
NEMO_RUN_OWN = "nemo_run.* (own modules, self time summed)"


DRY_RUN = "nemotron nano3 pretrain -c tiny -r bench-slurm -d"


def command_line(args: list[str]) -> list[str]:
    if args[:1] == ["-c"]:
        return [sys.executable, *args]
    return [sys.executable, "-m", "flows.cli", *args]


def time_once(argv: list[str], cwd: Path, env: dict[str, str], project: Path = PROJECT) -> float:
    """Wall seconds of one call, with `project` (this checkout or the one compared) on PYTHONPATH."""
    env = dict(env, PYTHONPATH=str(project))
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def import_breakdown(cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Cumulative import time (s) of the modules in BREAKDOWN, for one dry-run."""
    argv = [sys.executable, "-X", "importtime", "-m", "flows.cli", *COMMANDS[DRY_RUN]]
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, cumulative, name = line.split("|")
        name = name.strip()
        if name in BREAKDOWN and name not in found:
            found[name] = int(cumulative) / 1e6
        if name.startswith("nemo_run."):  # a dry-run builds the package itself (tasks/nemo_run_for_planning.py)
            found[NEMO_RUN_OWN] = found.get(NEMO_RUN_OWN, 0.0) + int(own.removeprefix("import time:")) / 1e6
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="measured runs per command (at least 5)")
    parser.add_argument("--breakdown", action="store_true", help="also report the dry-run's largest imports")
    parser.add_argument("--against", type=Path, help="another checkout (the code before a change): its dry-run is timed in the same loop")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    if args.against is not None and not (args.against / "flows" / "cli.py").is_file():
        parser.error(f"--against {args.against}: not a checkout of this project (no flows/cli.py)")
    # (name, arguments, checkout): this checkout's commands, then the compared checkout's dry-run.
    commands = [(name, argv, PROJECT) for name, argv in COMMANDS.items()]
    if args.against is not None:
        commands.append((f"{DRY_RUN} ({args.against.resolve().name})", COMMANDS[DRY_RUN], args.against.resolve()))

    scratch = Path(tempfile.mkdtemp(prefix="nano3-bench-"))
    try:
        (scratch / "home").mkdir()
        (scratch / "work").mkdir()
        (scratch / "work" / "env.toml").write_text(PROFILE)
        env = {k: v for k, v in os.environ.items() if k not in ("NEMOTRON_ENV_FILE", "PREFECT_API_URL")}
        env.update(HOME=str(scratch / "home"), PREFECT_HOME=str(scratch / "home" / ".prefect"))
        cwd = scratch / "work"
        times: dict[str, list[float]] = {name: [] for name, _, _ in commands}
        for name, argv, project in commands:
            time_once(command_line(argv), cwd, env, project)  # warm-up: .pyc files, page cache
        # Interleaved, so a change in the machine's load hits every command alike.
        for _ in range(args.runs):
            for name, argv, project in commands:
                times[name].append(time_once(command_line(argv), cwd, env, project))
        breakdown = import_breakdown(cwd, dict(env, PYTHONPATH=str(PROJECT))) if args.breakdown else {}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    baseline = statistics.median(times["python -c pass (baseline)"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {load:.2f} at the end; {args.runs} runs each after one warm-up\n")
    print("| command | min (s) | median (s) | max (s) | median / baseline | goal (median ≤ 1.0 s) |")
    print("|---|---|---|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        goal = "" if "baseline" in name else ("met" if median <= 1.0 else "missed")
        print(f"| `{name}` | {min(samples):.3f} | {median:.3f} | {max(samples):.3f} | {median / baseline:.1f}× | {goal} |")
    if breakdown:
        print("\nDry-run imports (cumulative, one run, `python -X importtime`):\n")
        print("| module | seconds |")
        print("|---|---|")
        for name in (*BREAKDOWN, NEMO_RUN_OWN):
            if name not in breakdown:
                shown = "not imported"
            elif breakdown[name] < 0.001:
                shown = "blocked while planning (tasks/lean_imports.py)"
            else:
                shown = f"{breakdown[name]:.2f}"
            print(f"| `{name}` | {shown} |")


if __name__ == "__main__":
    main()

"""Latency of the `nemotron` command line, as a user feels it: a fresh process per call.

    .venv/bin/python bench/cli_latency.py               # 7 runs of each command
    .venv/bin/python bench/cli_latency.py --runs 11 --breakdown

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
BREAKDOWN = ("typer", "pydantic", "omegaconf", "flows.run_options", "prefect", "nemo_run", "leptonai", "torch", "chardet",
             "charset_normalizer")


def command_line(args: list[str]) -> list[str]:
    if args[:1] == ["-c"]:
        return [sys.executable, *args]
    entry = Path(sys.executable).with_name("nemotron")
    return [str(entry), *args] if entry.exists() else [sys.executable, "-m", "flows.cli", *args]


def time_once(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def import_breakdown(cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Cumulative import time (s) of the modules in BREAKDOWN, for one dry-run."""
    argv = [sys.executable, "-X", "importtime", "-m", "flows.cli", *COMMANDS["nemotron nano3 pretrain -c tiny -r bench-slurm -d"]]
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        if name in BREAKDOWN and name not in found:
            found[name] = int(cumulative) / 1e6
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="measured runs per command (at least 5)")
    parser.add_argument("--breakdown", action="store_true", help="also report the dry-run's largest imports")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")

    scratch = Path(tempfile.mkdtemp(prefix="nano3-bench-"))
    try:
        (scratch / "home").mkdir()
        (scratch / "work").mkdir()
        (scratch / "work" / "env.toml").write_text(PROFILE)
        env = {k: v for k, v in os.environ.items() if k not in ("NEMOTRON_ENV_FILE", "PREFECT_API_URL")}
        env.update(HOME=str(scratch / "home"), PREFECT_HOME=str(scratch / "home" / ".prefect"), PYTHONPATH=str(PROJECT))
        cwd = scratch / "work"
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for name, argv in COMMANDS.items():
            time_once(command_line(argv), cwd, env)  # warm-up: .pyc files, page cache
        # Interleaved, so a change in the machine's load hits every command alike.
        for _ in range(args.runs):
            for name, argv in COMMANDS.items():
                times[name].append(time_once(command_line(argv), cwd, env))
        breakdown = import_breakdown(cwd, env) if args.breakdown else {}
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
        for name in BREAKDOWN:
            if name not in breakdown:
                shown = "not imported"
            elif breakdown[name] < 0.001:
                shown = "blocked while planning (tasks/lean_imports.py)"
            else:
                shown = f"{breakdown[name]:.2f}"
            print(f"| `{name}` | {shown} |")


if __name__ == "__main__":
    main()

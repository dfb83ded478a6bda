"""The crash campaign (tests/reliability/campaign.py) over several seeds: 100 SIGKILLs by default.

    .venv/bin/python bench/crash_campaign.py                          # 4 seeds × 25 kills
    .venv/bin/python bench/crash_campaign.py --seeds 1337 7 --kills 10 --keep

For each seed: one uninterrupted run of the toy pipeline is timed and the kill points are drawn
from it; each cycle starts the pipeline on an empty store, SIGKILLs the orchestrator at its point
(only it: its local jobs must stop themselves), reruns at once and checks the store and the jobs'
journals. Every cycle has its own folder (store, HOME, NeMo-Run home); one `prefect server start`
serves them all. Prints each seed's report, then the totals (runs finished, duplicate
submissions, artifacts whose digests fail, finished stages redone) with the machine and the
wall time, for docs/reliability.md. Exits 1 when a count misses its goal. The folders of cycles
with a problem are kept and named; --keep keeps them all.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from tests.prefect_server import prefect_server  # noqa: E402
from tests.reliability.campaign import Campaign, Cycle, report, run_campaign, summary  # noqa: E402

DEFAULT_SEEDS = (1337, 7, 42, 2025)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--kills", type=int, default=25, help="kills per seed")
    parser.add_argument("--keep", action="store_true", help="keep every cycle's folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the reports to this file")
    args = parser.parse_args()

    # The runs' environment: nothing of the caller's configuration or credentials.
    for name in ("NEMOTRON_ENV_FILE", "NANO3_ARTIFACTS_ROOT", "PREFECT_API_URL", "WANDB_API_KEY", "HF_TOKEN",
                 "AWS_SECRET_ACCESS_KEY", "LEPTON_WORKSPACE_TOKEN"):
        os.environ.pop(name, None)
    scratch = Path(tempfile.mkdtemp(prefix="nano3-crash-campaign-"))
    started = time.monotonic()
    campaigns: list[Campaign] = []
    kept: list[Path] = []

    def progress(seed: int) -> Callable[[int, Cycle], None]:
        def on_cycle(number: int, cycle: Cycle) -> None:
            at = f"{cycle.kill_after:.2f} s" if cycle.killed else "the end (done)"
            state = "finished" if cycle.finished else "FAILED"
            flags = f"; {len(cycle.problems)} problem(s)" if cycle.problems else ""
            print(f"[{time.monotonic() - started:6.0f} s] seed {seed} cycle {number + 1}/{args.kills}: "
                  f"killed at {at}, rerun {state}{flags}", file=sys.stderr, flush=True)
            if cycle.root is not None and not args.keep and cycle.finished and not cycle.problems:
                shutil.rmtree(cycle.root, ignore_errors=True)
            elif cycle.root is not None:
                kept.append(cycle.root)
        return on_cycle

    try:
        with prefect_server(scratch / "prefect") as api:
            for seed in args.seeds:
                root = scratch / f"seed-{seed}"
                campaigns.append(run_campaign(root, api, kills=args.kills, seed=seed, on_cycle=progress(seed)))
                print(report(campaigns[-1]) + "\n", flush=True)
    finally:
        if not kept and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    elapsed = time.monotonic() - started
    cycles = [c for campaign in campaigns for c in campaign.cycles]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"crash campaign: {len(cycles)} kills, seeds {', '.join(map(str, args.seeds))} ({args.kills} each)",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load:.2f} at the end; wall time {elapsed / 60:.0f} min",
        "uninterrupted runs: " + ", ".join(f"{c.duration:.1f} s (seed {c.seed})" for c in campaigns),
        *summary(cycles),
        f"kill points after the run had ended: {sum(not c.killed for c in cycles)}",
    ]
    problems = [p for campaign in campaigns for p in campaign.problems]
    if kept:
        lines.append("kept: " + ", ".join(str(p) for p in kept))
    text = "\n".join(lines + problems)
    print(text)
    if args.out:
        args.out.write_text("\n\n".join(report(c) for c in campaigns) + "\n\n" + text + "\n")
    ok = sum(c.finished for c in cycles) == len(cycles) and not problems
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""What each stage adds, over seeds: the ladder pretrained → SFT → RL → export at the size CI runs.

    .venv/bin/python bench/ladder.py                     # seeds 1234 (CI's), 1, 2; one after the other
    .venv/bin/python bench/ladder.py --seeds 1234 --size tiny
    .venv/bin/python bench/ladder.py --seeds 1,2 --read 1234=<e2e store>@v1   # with the e2e's first run

Seeds run one after the other by default: each recipe uses every core (torch threads), and three
at once on 2 cores ran ≈ 10× slower than one.

Each seed runs `python -m flows.nano3 <CI overrides> seed=<seed>` (every stage's seed) from a clean
state in its own folder (HOME, store, NeMo-Run home, Prefect's temporary server), then reads the
eval's report and the pretrained model's metrics from the store. Per seed: pretraining's held-out
perplexity before → after, and each rung's scores on the same held-out tasks; then each stage's
gain and its smallest value over the seeds: the e2e test's margins (tests/test_pipeline_e2e.py,
LADDER) sit below those. Prints a Markdown table for docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.orchestration import environment  # noqa: E402
from tasks.artifacts import ArtifactStore  # noqa: E402
from tests.ci_run import CI_RUN  # noqa: E402

SIZES = {"ci": CI_RUN, "tiny": []}


@dataclass
class Ladder:
    seed: int
    #: None for a run read from a store (--read) rather than run here.
    wall_s: float | None
    perplexity_start: float
    perplexity: float
    #: checkpoint → {exact_match, exact_match_number, bits_per_byte, ...} from the eval's report.
    rows: dict[str, dict[str, float]]

    def gains(self) -> dict[str, float]:
        r = self.rows
        return {
            "pretrain perplexity ratio (start / end)": self.perplexity_start / self.perplexity,
            "SFT: right sums, over pretrained": r["sft"]["exact_match_number"] - r["pretrained"]["exact_match_number"],
            "RL: exact match, over SFT": r["rl"]["exact_match"] - r["sft"]["exact_match"],
            "export bits/byte ÷ pretrained's": r["export"]["bits_per_byte"] / r["pretrained"]["bits_per_byte"],
        }


def start(seed: int, overrides: list[str], root: Path) -> subprocess.Popen:
    folder = root / f"seed-{seed}"
    (folder / "home").mkdir(parents=True)
    env = environment(folder)
    env["NANO3_SCRATCH"] = str(root / "scratch")  # the offline corpus is made once for all seeds
    log = (folder / "run.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "flows.nano3", *overrides, f"seed={seed}"], cwd=PROJECT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def read(seed: int, store_root: Path, wall: float | None, version: str = "latest") -> Ladder:
    """The ladder of a finished run's store (`version`: the eval version of the run to read)."""
    store = ArtifactStore(str(store_root))
    evaluation = store.resolve(f"nano3-eval:{version}")
    pretrained = store.resolve(next(i["name"] + ":" + i["version"] for i in evaluation.inputs
                                    if i["name"] == "nano3-pretrain-model")).metrics
    report = evaluation.report
    assert report is not None, "the eval published no report"
    rows = {row["checkpoint"]: row for row in report.rows}
    return Ladder(seed, wall, pretrained["valid_perplexity_start"], pretrained["valid_perplexity"], rows)


def run(seeds: list[int], overrides: list[str], root: Path, parallel: int) -> list[Ladder]:
    done: list[Ladder] = []
    pending = list(seeds)
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    while pending or running:
        while pending and len(running) < parallel:
            seed = pending.pop(0)
            running[seed] = (start(seed, overrides, root), time.perf_counter())
        for seed, (proc, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[seed]
            if proc.returncode != 0:
                log = root / f"seed-{seed}" / "run.log"
                raise SystemExit(f"seed {seed} failed ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
            done.append(read(seed, root / f"seed-{seed}" / "store", time.perf_counter() - started))
            print(f"seed {seed}: {done[-1].gains()}", flush=True)
        time.sleep(2)
    return sorted(done, key=lambda ladder: seeds.index(ladder.seed))


def markdown(ladders: list[Ladder], parallel: int) -> str:
    columns = ["pretrained", "sft", "rl", "export"]
    lines = ["| seed | wall (s) | perplexity start → end | " + " | ".join(
        f"{c}: exact / right sum / bits per byte" for c in columns) + " |", "|---" * (3 + len(columns)) + "|"]
    for ladder in ladders:
        cells = [f"{ladder.rows[c]['exact_match']:.3f} / {ladder.rows[c]['exact_match_number']:.3f} / "
                 f"{ladder.rows[c]['bits_per_byte']:.3f}" for c in columns]
        wall = "–" if ladder.wall_s is None else f"{ladder.wall_s:.0f}"
        lines.append(f"| {ladder.seed} | {wall} | {ladder.perplexity_start:.0f} → {ladder.perplexity:.1f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| gain | " + " | ".join(f"seed {ladder.seed}" for ladder in ladders) + " | smallest |",
              "|---" * (len(ladders) + 2) + "|"]
    for name in ladders[0].gains():
        values = [ladder.gains()[name] for ladder in ladders]
        worst = max(values) if "bits/byte" in name else min(values)
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {worst:.3f} |")
    lines.append(f"\n({len(ladders)} seeds, {parallel} at a time; wall times are per run.)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1234,1,2", help="comma-separated seeds")
    parser.add_argument("--size", choices=sorted(SIZES), default="ci")
    parser.add_argument("--parallel", type=int, default=1, help="seeds run at once (wall times grow with it)")
    parser.add_argument("--root", type=Path, default=None, help="where the runs' folders go (default: a temp dir)")
    parser.add_argument("--read", action="append", default=[], metavar="SEED=STORE[@VERSION]",
                        help="also report a run made elsewhere with the same overrides (the e2e test's first run: "
                             "its store, eval version v1)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="nano3-ladder-"))
    read_elsewhere = []
    for item in args.read:
        seed, _, where = item.partition("=")
        store, _, version = where.partition("@")
        read_elsewhere.append(read(int(seed), Path(store), None, version or "latest"))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    ladders = read_elsewhere + (run(seeds, SIZES[args.size], root, max(1, args.parallel)) if seeds else [])
    print(markdown(ladders, max(1, args.parallel)))


if __name__ == "__main__":
    main()

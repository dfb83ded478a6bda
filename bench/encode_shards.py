"""Shards as Prefect tasks on Ray (`nemotron data encode`) against encoding in one process.

    .venv/bin/python bench/encode_shards.py --mb 20 --runs 3

Each round, in a fresh folder, with one CPU for the encoding (so the figures are the cost of the
machinery, not parallelism):
- one process: `python -m recipes.nano3.data_prep.binidx --workers 1` (the baseline);
- `nemotron data encode --workers 1` with few shards and with many: the difference, divided by
  the difference in shard count, is what each shard costs (a Prefect task run on Ray: its API
  calls, its key, its files); the rest is the fixed cost (Ray and the flow run);
- the many-shard run again: every shard Cached.
Then once: a run killed (SIGKILL to the command and Ray's processes) when 60 % of its shards
are done, and its rerun: how many shards the rerun encodes. The local Prefect server is started
before the first round and used by every run. Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.orchestration import environment, timed  # noqa: E402
from blocks.prefect_server import stop_local_servers  # noqa: E402
from tests.processes import session_members  # noqa: E402

WORDS = ["the", "model", "data", "shard", "ray", "prefect", "token", "12", "naïve", "日本", "\n", "😀", "  "]
SUMMARY = re.compile(r"(\d+) shards, (\d+) encoded now")


def make_corpus(folder: Path, megabytes: float) -> tuple[Path, Path]:
    import numpy as np

    from recipes.nano3.data_prep import tokenizer

    path, tok_file = folder / "docs.jsonl", folder / "tokenizer.json"
    if path.is_file() and tok_file.is_file():
        return path, tok_file
    rng = np.random.default_rng(1)
    texts, size = [], 0
    while size < megabytes * 1e6:
        texts.append(" ".join(rng.choice(WORDS, size=rng.integers(5, 400))))
        size += len(texts[-1].encode()) + 12
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    tokenizer.train(texts[:3000], 2000, ["<pad>", "<bos>", "<eos>"]).save(str(tok_file))
    return path, tok_file


def encode_command(path: Path, tok: Path, prefix: Path, shards: int, *extra: str) -> list[str]:
    shard_mb = path.stat().st_size / 1e6 / shards * 1.0001
    return [sys.executable, "-m", "flows.cli", "data", "encode", str(path), "-t", str(tok), "-o", str(prefix),
            "--shard-mb", f"{shard_mb:.6f}", "--workers", "1", *extra]


def encoded_now(log: Path) -> tuple[int, int]:
    found = SUMMARY.findall(log.read_text())
    if not found:
        raise SystemExit(f"no summary line in {log}")
    shards, encoded = found[-1]
    return int(shards), int(encoded)


def killed_at(fraction: float, argv: list[str], shard_dir: Path, total: int, env: dict[str, str], log: Path) -> int:
    """Runs argv, kills its whole session once `fraction` of the shards are finished: those finished then."""
    with log.open("w") as out:
        process = subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while len(list(shard_dir.glob("*[0-9a-f].idx"))) < fraction * total:
            if process.poll() is not None:
                raise SystemExit(f"finished before it could be killed; see {log}")
            time.sleep(0.02)
        for pid in session_members(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.wait()
    while session_members(process.pid):
        time.sleep(0.2)
    return len(list(shard_dir.glob("*[0-9a-f].idx")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=20.0, help="corpus size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--few", type=int, default=4, help="shards of the first run")
    parser.add_argument("--many", type=int, default=32, help="shards of the second")
    options = parser.parse_args()
    cache = Path.home() / ".cache" / "nano3" / "bench" / "encode_shards"
    cache.mkdir(parents=True, exist_ok=True)
    path, tok = make_corpus(cache, options.mb)
    root = Path(tempfile.mkdtemp(prefix="encode-shards-"))
    env = {**environment(root), "NANO3_LOCAL_SERVER_IDLE_MINUTES": "10", "RAY_USAGE_STATS_ENABLED": "0"}
    (root / "home").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[float]] = {}
    try:
        # The local Prefect server, started once: every run below uses it.
        timed(encode_command(path, tok, root / "warm", 2), cwd=PROJECT, env=env, log=root / "warm.log")
        for r in range(options.runs):
            out = root / f"round{r}"
            out.mkdir()
            base = timed([sys.executable, "-m", "recipes.nano3.data_prep.binidx", "--tokenizer", str(tok), "--input",
                          str(path), "--output-prefix", str(out / "one"), "--workers", "1"],
                         cwd=PROJECT, env=env, log=out / "one.log")
            rows.setdefault("one process", []).append(base.wall)
            for count in (options.few, options.many):
                run = timed(encode_command(path, tok, out / f"s{count}", count), cwd=PROJECT, env=env, log=out / f"s{count}.log")
                shards, encoded = encoded_now(out / f"s{count}.log")
                assert encoded == shards, (shards, encoded)
                rows.setdefault(f"{shards} shards", []).append(run.wall)
                for suffix in (".bin", ".idx"):
                    if (out / f"s{count}{suffix}").read_bytes() != (out / f"one{suffix}").read_bytes():
                        raise SystemExit(f"round {r}: {count} shards differ from one process ({suffix})")
            again = timed(encode_command(path, tok, out / f"s{options.many}", options.many), cwd=PROJECT, env=env,
                          log=out / "again.log")
            assert encoded_now(out / "again.log")[1] == 0
            rows.setdefault(f"{shards} shards, all Cached", []).append(again.wall)
        kill_dir = root / "killed"
        kill_dir.mkdir()
        argv = encode_command(path, tok, kill_dir / "out", options.many)
        finished = killed_at(0.6, argv, kill_dir / "out.shards", shards, env, root / "killed.log")
        timed(argv, cwd=PROJECT, env=env, log=root / "rerun.log")
        total, encoded = encoded_now(root / "rerun.log")
    finally:
        stop_local_servers(root / "home" / ".prefect")
    base = statistics.median(rows["one process"])
    few, many = statistics.median(rows[f"{options.few} shards"]), statistics.median(rows[f"{shards} shards"])
    per_shard = (many - few) / (shards - options.few)
    print(f"\n{platform.node()}, {os.cpu_count()} cores, corpus {path.stat().st_size / 1e6:.1f} MB, "
          f"load {os.getloadavg()[0]:.1f}, {options.runs} rounds\n")
    print("| run | wall min / median / max (s) | median / one process |")
    print("|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f} | "
              f"{statistics.median(values) / base:.2f}× |")
    print(f"\nper shard: {per_shard:.3f} s ({per_shard / (base / shards):.2f}× a shard's encoding in one process); "
          f"fixed: {few - base - options.few * per_shard:.1f} s")
    print(f"killed at 60 %: {finished} of {total} shards finished; the rerun encoded {encoded} "
          f"({'only the rest' if encoded == total - finished else 'MORE than the rest'})")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

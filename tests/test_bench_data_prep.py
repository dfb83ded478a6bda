"""bench/data_prep.py at toy size: it builds its material, runs every path but Ray (the recipe
tests cover Ray), and finds the outputs byte-identical to the single-process HF encoder's, the fast
BPE engine's included. Timings are printed, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def test_data_prep_benchmark_at_toy_size(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    argv = [sys.executable, str(PROJECT / "bench" / "data_prep.py"), "--corpus-mb", "1", "--vocab-size", "1000",
            "--runs", "1", "--workers", "2", "--paths", "limit,limit_batched,ours,ours_hf,baseline", "--cache",
            str(tmp_path / "cache"), "--json", str(results)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "outputs: byte-identical .bin/.idx across ours, ours_hf, baseline and every run, and to the single-process HF" \
        in proc.stdout
    found = json.loads(results.read_text())
    assert found["identical"] and set(found["digests"]) == {"ours", "ours_hf", "baseline"}
    assert found["engines"]["ours"].startswith("tokenizer engine: tiktoken"), found["engines"]
    assert found["engines"]["ours_hf"].startswith("tokenizer engine: HF tokenizers"), found["engines"]
    assert found["corpus"]["text_bytes"] <= 1_000_000 and found["corpus"]["documents"] > 1000
    assert set(found["seconds"]) == {"limit", "limit_batched", "ours", "ours_hf", "baseline"}
    assert "| ours |" in proc.stdout and "÷ baseline" in proc.stdout

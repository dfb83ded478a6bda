"""The .bin/.idx writer of the data recipes against megatron-core's own builder, and its sharding.

binidx.py writes megatron-core's indexed dataset format itself (importing megatron.core costs
more than encoding a 60 MB corpus on two cores); these tests hold it to the builder's bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from recipes.nano3.data_prep import binidx


def documents(seed: int, count: int, high: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, size=rng.integers(1, 300)) for _ in range(count)]


@pytest.mark.parametrize("vocab_size", [4096, 131072], ids=["uint16", "int32"])
def test_writer_matches_indexed_dataset_builder(tmp_path: Path, vocab_size: int) -> None:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

    docs = documents(vocab_size, 500, vocab_size)
    dtype = binidx.token_dtype(vocab_size)
    assert dtype == np.dtype(DType.optimal_dtype(vocab_size))

    builder = IndexedDatasetBuilder(str(tmp_path / "megatron.bin"), dtype=DType.optimal_dtype(vocab_size))
    for doc in docs:
        builder.add_document(doc, [doc.size])
    builder.finalize(str(tmp_path / "megatron.idx"))

    # In uneven batches, and again through shards: the same bytes either way.
    ours = binidx.IndexedDatasetWriter(tmp_path / "ours", dtype)
    for start, stop in [(0, 1), (1, 77), (77, 300), (300, 500)]:
        batch = docs[start:stop]
        ours.add_documents(np.concatenate(batch), np.array([d.size for d in batch]))
    counts = ours.finish()
    for start, stop, name in [(0, 123, "a"), (123, 123, "empty"), (123, 500, "b")]:
        shard = binidx.IndexedDatasetWriter(tmp_path / name, dtype)
        if stop > start:
            shard.add_documents(np.concatenate(docs[start:stop]), np.array([d.size for d in docs[start:stop]]))
        shard.finish()
    joined = binidx.IndexedDatasetWriter(tmp_path / "joined", dtype)
    for name in ("a", "empty", "b"):
        joined.add_shard(tmp_path / name)
    joined.finish()

    for suffix in (".bin", ".idx"):
        expected = (tmp_path / f"megatron{suffix}").read_bytes()
        assert (tmp_path / f"ours{suffix}").read_bytes() == expected, suffix
        assert (tmp_path / f"joined{suffix}").read_bytes() == expected, suffix
    assert counts == binidx.Counts(500, sum(d.size for d in docs))
    dataset = IndexedDataset(str(tmp_path / "ours"))
    assert len(dataset) == 500 and all((dataset[i] == docs[i]).all() for i in (0, 250, 499))


def test_line_ranges_cover_every_line_once(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    texts = [f"document {i} " + "é" * (i % 17) for i in range(41)]
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    for parts in (1, 2, 3, 7, 41, 60):
        ranges = binidx.line_ranges(path, parts)
        # Two cuts in one line, or more parts than lines: no empty shard (each costs a file pair and a task).
        assert all(b > a for a, b in ranges)
        assert len(ranges) == parts if parts <= 7 else len(ranges) <= len(texts)
        assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
        read = [t for a, b in ranges for batch in binidx.text_batches(path, a, b, batch_bytes=100) for t in batch]
        assert read == texts, parts


def test_fixed_size_cuts_survive_appended_text(tmp_path: Path) -> None:
    """Shards of a fixed size are cut where the bytes before them say: more data at the end of the
    file changes the last shard only, so the earlier ones keep their keys (and their encoding)."""
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document {i} " + "x" * (i * 7 % 50)}) + "\n" for i in range(200)]
    path.write_text("".join(lines[:150]))
    before = binidx.line_ranges_every(path, 1000)
    assert len(before) > 5 and all(b - a < 1000 + 80 for a, b in before)
    path.write_text("".join(lines))
    after = binidx.line_ranges_every(path, 1000)
    assert after[: len(before) - 1] == before[:-1] and after[len(before) - 1][0] == before[-1][0]
    read = [t for a, b in after for batch in binidx.text_batches(path, a, b) for t in batch]
    assert read == [json.loads(line)["text"] for line in lines]


def test_threads_and_processes_write_one_document_at_a_time_s_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads in this process (workers ≤ THREADS_PER_PROCESS) and a pool of processes with
    threads each (more workers) give the bytes of encoding one document at a time, in order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rng = np.random.default_rng(7)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "42", "eta", "theta", "\n", "iota"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 400))) for _ in range(2_000)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts[:200], trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"]))
    eos = tok.token_to_id("<eos>")

    expected = binidx.IndexedDatasetWriter(tmp_path / "expected", binidx.token_dtype(tok.get_vocab_size()))
    for text in texts:
        ids = np.array([*tok.encode(text, add_special_tokens=False).ids, eos])
        expected.add_documents(ids, np.array([ids.size]))
    expected.finish()

    assert binidx.THREADS_PER_PROCESS < 6
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    for workers in (1, 3, 6):
        reports: list[tuple[int, int]] = []
        counts = binidx.encode(tok, path, tmp_path / f"w{workers}", eos="<eos>", workers=workers, batch_bytes=16 << 10,
                               on_progress=lambda documents, tokens: reports.append((documents, tokens)))
        for suffix in (".bin", ".idx"):
            assert (tmp_path / f"w{workers}{suffix}").read_bytes() == (tmp_path / f"expected{suffix}").read_bytes()
        assert counts == binidx.Counts(len(texts), expected.tokens)
        assert reports[-1] == (counts.documents, counts.tokens) and reports == sorted(reports)
        # In this process, a report per batch; over processes, one per shard.
        batches = len(list(binidx.text_batches(path, batch_bytes=16 << 10)))
        shards = len(binidx.plan_shards(path, "w", 2, tmp_path, "<eos>", 16 << 10))
        assert 1 < shards < batches and len(reports) == (shards if workers == 6 else batches), workers
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true", "the user's setting is restored"
    assert not (tmp_path / "w6.shards").exists(), "shards are removed once joined"

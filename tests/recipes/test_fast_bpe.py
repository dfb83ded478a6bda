"""The fast BPE engine of the data recipes (fast_bpe.py): used only where it gives HF tokenizers'
ids, and then the .bin/.idx are byte for byte those of encoding each document with HF tokenizers.

The corpus holds what a BPE engine could get wrong: added tokens inside text, whitespace runs,
CRLF, digits of every script, punctuation runs, non-Latin scripts and emoji.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recipes.nano3.data_prep import binidx, fast_bpe, tokenizer

SPECIAL = ["<pad>", "<bos>", "<eos>", "<user>", "<assistant>", "<end>"]


def corpus_texts() -> list[str]:
    rng = np.random.default_rng(3)
    cases = [t for t in fast_bpe.EDGE_CASES if not fast_bpe._refused(t)]
    words = ["the", " model", "'s", "12", "３", "٣4", "\r\n", "  ", "\t", "!!", "...", "日本", "😀", "👨‍👩‍👧",
             "<eos>", "<user>", "<end", "x²", "naïve", "\n\n\n", "Ω", "---", " 7"]
    generated = ["".join(rng.choice(words, size=rng.integers(1, 60))) for _ in range(600)]
    return cases + generated


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, Path]:
    """(corpus.jsonl, the recipe's tokenizer trained on it, the HF one-document-at-a-time .bin/.idx prefix)."""
    folder = tmp_path_factory.mktemp("fast_bpe")
    texts = corpus_texts()
    path = folder / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    tok = tokenizer.train(texts, 700, SPECIAL)
    expected = hf_one_at_a_time(tok, texts, folder / "expected")
    return path, tok, expected


def hf_one_at_a_time(tok, texts: list[str], prefix: Path) -> Path:
    eos = tok.token_to_id("<eos>")
    writer = binidx.IndexedDatasetWriter(prefix, binidx.token_dtype(tok.get_vocab_size()))
    for text in texts:
        ids = np.array([*tok.encode(text, add_special_tokens=False).ids, eos])
        writer.add_documents(ids, np.array([ids.size]))
    writer.finish()
    return prefix


def same_files(prefix: Path, expected: Path) -> None:
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == Path(f"{expected}{suffix}").read_bytes(), suffix


def test_recipe_tokenizer_is_proven_and_encodes_byte_identical(material, tmp_path: Path, capsys) -> None:
    path, tok, expected = material
    assert "<eos>" in path.read_text(encoding="utf-8") and "\\r\\n" in path.read_text(encoding="utf-8")
    fast = binidx.select_bpe(tok, path)
    assert isinstance(fast, fast_bpe.FastBPE) and fast.pattern == fast_bpe.DIGITS_GPT2_PATTERN
    assert "tokenizer engine: tiktoken" in capsys.readouterr().out
    for workers in (1, 2):  # one thread, threads
        binidx.encode(tok, path, tmp_path / f"w{workers}", eos="<eos>", workers=workers, batch_bytes=4 << 10)
        same_files(tmp_path / f"w{workers}", expected)
    assert "tokenizer engine: tiktoken" in capsys.readouterr().out


def test_shards_carry_the_fast_engine_to_workers(material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Process pools and Ray tasks run `encode_shard`: here in this process, without starting either."""
    path, tok, expected = material
    monkeypatch.setattr(binidx, "MIN_SHARD_BYTES", 8 << 10)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    shards = binidx.plan_shards(path, tmp_path / "out", 2, shard_dir, "<eos>", 4 << 10, fast=True)
    assert len(shards) > 1 and all(s.fast for s in shards)
    binidx._worker_tokenizer.clear()
    encoded = [binidx.encode_shard(shard, tok.to_str()) for shard in shards]
    (_, engine), = binidx._worker_tokenizer.values()
    assert isinstance(engine, fast_bpe.FastBPE)
    binidx.join_shards(encoded, tmp_path / "out", binidx.token_dtype(tok.get_vocab_size()), shard_dir)
    same_files(tmp_path / "out", expected)
    binidx._worker_tokenizer.clear()


def test_a_tokenizer_with_a_normalizer_falls_back_to_hf(material, tmp_path: Path, capsys) -> None:
    from tokenizers import Tokenizer, normalizers

    path, tok, _ = material
    normalized = Tokenizer.from_str(tok.to_str())
    normalized.normalizer = normalizers.NFKC()
    assert binidx.select_bpe(normalized, path) is None
    assert "tokenizer engine: HF tokenizers (the tokenizer has a normalizer (NFKC))" in capsys.readouterr().out
    texts = [t for batch in binidx.text_batches(path) for t in batch]
    expected = hf_one_at_a_time(normalized, texts, tmp_path / "expected")
    binidx.encode(normalized, path, tmp_path / "ours", eos="<eos>", workers=2, batch_bytes=4 << 10)
    same_files(tmp_path / "ours", expected)


@pytest.mark.parametrize("change", ["pattern", "added_token_rule", "ids_out_of_merge_order", "bpe_hf"])
def test_what_cannot_be_proven_falls_back(material, monkeypatch: pytest.MonkeyPatch, capsys, change: str) -> None:
    from tokenizers import Tokenizer

    path, tok, _ = material
    spec = json.loads(tok.to_str())
    if change == "pattern":  # a regex that ignores the digit split: the self-check finds the difference
        monkeypatch.setattr(fast_bpe, "DIGITS_GPT2_PATTERN", fast_bpe.GPT2_PATTERN)
        reason = "the fast engine differs on text"
    elif change == "added_token_rule":
        spec["added_tokens"][2]["lstrip"] = True
        reason = "added token '<eos>' has lstrip"
    elif change == "ids_out_of_merge_order":
        vocab = spec["model"]["vocab"]
        first, last = (("".join(m) if isinstance(m, list) else m.replace(" ", "")) for m in
                       (spec["model"]["merges"][0], spec["model"]["merges"][-1]))
        vocab[first], vocab[last] = vocab[last], vocab[first]
        reason = "ids do not follow the merges"
    else:
        reason = "asked for: bpe=hf"
    changed = Tokenizer.from_str(json.dumps(spec))
    assert binidx.select_bpe(changed, path, "hf" if change == "bpe_hf" else "auto") is None
    line = capsys.readouterr().out
    assert "tokenizer engine: HF tokenizers (" in line and reason in line, line


def test_gpt2_style_tokenizer_without_digit_split(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = corpus_texts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast, line = fast_bpe.select(tok, texts)
    assert fast is not None and fast.pattern == fast_bpe.GPT2_PATTERN, line
    assert fast_bpe.first_difference(fast, tok, [*texts, "a<|endoftext|>b<|endoftext|"]) is None


def test_a_lone_surrogate_fails_as_with_hf(tmp_path: Path, material) -> None:
    _, tok, _ = material
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "a\\ud800b"}\n', encoding="utf-8")
    for bpe in ("hf", "auto"):
        with pytest.raises(TypeError):
            binidx.encode(tok, path, tmp_path / bpe, eos="<eos>", workers=1, bpe=bpe)


def test_a_finished_shard_is_reused_and_a_changed_one_encoded_again(material, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard's files are named by its bytes, the tokenizer and the end token: a job killed
    halfway finds the shards it finished; a shard whose text changed is encoded again."""
    path, tok, expected = material
    monkeypatch.setattr(binidx, "MIN_SHARD_BYTES", 8 << 10)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    shards = binidx.plan_shards(path, tmp_path / "out", 2, shard_dir, "<eos>", 4 << 10)
    first = [binidx.encode_shard(shard, tok.to_str()) for shard in shards[:2]]  # then "killed"
    assert [s.reused for s in first] == [False, False]
    (shard_dir / "stray.partial.bin").write_bytes(b"cut short")  # a crash mid-shard leaves only .partial files
    again = [binidx.encode_shard(shard, tok.to_str()) for shard in shards]
    assert [s.reused for s in again] == [True, True] + [False] * (len(shards) - 2)
    assert [s.prefix for s in again[:2]] == [s.prefix for s in first]
    binidx.join_shards(again, tmp_path / "out", binidx.token_dtype(tok.get_vocab_size()))
    same_files(tmp_path / "out", expected)
    # Another end-of-document token, or other bytes in a shard: another key, so not reused.
    other_eos = binidx.encode_shard(binidx.Shard(**{**shards[0].__dict__, "eos": "<end>"}), tok.to_str())
    assert not other_eos.reused and other_eos.prefix != again[0].prefix
    assert binidx.shard_key(shards[1], tok.to_str()) != binidx.shard_key(shards[0], tok.to_str())
    # Edited encoding code (or another tokenizers version): the finished shards are not reused.
    monkeypatch.setattr(binidx, "encoder_digest", lambda: "another version of the encoder")
    assert not binidx.encode_shard(shards[0], tok.to_str()).reused
    binidx._worker_tokenizer.clear()

# /// script
# requires-python = ">=3.11"
# [tool.runspec]
# name = "nano3/data_prep/pretrain"
# launch = "direct"
# ///
"""Build the pretraining corpus and tokenizer: documents → byte-level BPE → megatron .bin/.idx.

Two phases are checkpointed under work_dir, because they are the slow ones at hub scale: the
split corpus (step 1) and the trained tokenizer (step 2). A rerun of the same config resumes
after the newest and only re-encodes, which is deterministic: same config, same bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import time
from pathlib import Path

from omegaconf import OmegaConf

from recipes.nano3 import runtime
from recipes.nano3.data_prep import corpus, tokenizer

CORPUS_STEP, TOKENIZER_STEP = 1, 2
TRAIN_PREFIX, VALID_PREFIX = "train_text_document", "valid_text_document"
ENCODE_BATCH = 1024


def fingerprint(ctx: runtime.RecipeContext) -> str:
    """What the checkpoints depend on: a work_dir reused with another config must not resume."""
    relevant = {key: OmegaConf.to_container(ctx.config[key], resolve=True) for key in ("corpus", "tokenizer", "split")}
    return hashlib.sha256(json.dumps({**relevant, "seed": ctx.seed}, sort_keys=True).encode()).hexdigest()


def resume_step(ctx: runtime.RecipeContext) -> int:
    latest = runtime.latest_checkpoint(ctx.work_dir)
    if latest is None:
        return 0
    step, path = latest
    recorded = (path / "fingerprint").read_text() if (path / "fingerprint").is_file() else ""
    if recorded != fingerprint(ctx):
        raise SystemExit(f"error: {ctx.work_dir} holds checkpoints of another config; use a fresh work_dir")
    print(f"resumed from step {step}", flush=True)
    return step


def complete(ctx: runtime.RecipeContext, step: int) -> None:
    path = runtime.checkpoint_dir(ctx.work_dir, step)
    (path / "fingerprint").write_text(fingerprint(ctx))
    runtime.mark_checkpoint_complete(path)


def build_corpus(ctx: runtime.RecipeContext) -> None:
    cfg = ctx.config
    max_bytes = cfg.corpus.get("max_bytes")
    folder = runtime.checkpoint_dir(ctx.work_dir, CORPUS_STEP)
    folder.mkdir(parents=True, exist_ok=True)

    def report(stats: corpus.SplitStats) -> None:
        done = stats.bytes_train + stats.bytes_valid
        runtime.progress(done, max_bytes or 0, phase="corpus", documents=stats.documents_train + stats.documents_valid)

    stats = corpus.write_split(
        corpus.texts(cfg.corpus),
        folder / "train.jsonl",
        folder / "valid.jsonl",
        max_bytes=max_bytes,
        min_chars=int(cfg.corpus.get("min_chars", corpus.MIN_CHARS)),
        valid_fraction=float(cfg.split.valid_fraction),
        seed=ctx.seed,
        on_progress=report,
    )
    report(stats)
    if stats.documents_train == 0 or stats.documents_valid == 0:
        raise SystemExit(
            f"error: the corpus is empty or too small under corpus.max_bytes={max_bytes}: {stats.documents_train} "
            f"train and {stats.documents_valid} valid documents (each split needs one or more); "
            "raise corpus.max_bytes or split.valid_fraction"
        )
    (folder / "stats.json").write_text(json.dumps(stats.to_dict(), indent=2))
    complete(ctx, CORPUS_STEP)


def train_tokenizer(ctx: runtime.RecipeContext) -> None:
    tok_cfg = ctx.config.tokenizer
    folder = runtime.checkpoint_dir(ctx.work_dir, TOKENIZER_STEP)
    folder.mkdir(parents=True, exist_ok=True)
    documents = corpus.read_texts(runtime.checkpoint_dir(ctx.work_dir, CORPUS_STEP) / "train.jsonl")
    trained = tokenizer.train(documents, int(tok_cfg.vocab_size), list(tok_cfg.special_tokens))
    trained.save(str(folder / "tokenizer.json"))
    complete(ctx, TOKENIZER_STEP)


def encode(tok, documents_path: Path, prefix: Path, total: int, phase: str) -> int:
    """One document per docstring, eos appended; returns the token count."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    eos = tok.token_to_id(tokenizer.EOS)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=DType.optimal_dtype(tok.get_vocab_size()))
    documents, done, tokens = corpus.read_texts(documents_path), 0, 0
    while batch := list(itertools.islice(documents, ENCODE_BATCH)):
        for encoding in tok.encode_batch(batch, add_special_tokens=False):
            ids = np.asarray([*encoding.ids, eos])
            builder.add_document(ids, [ids.size])
            tokens += ids.size
        done += len(batch)
        runtime.progress(done, total, phase=phase, tokens=tokens)
    builder.finalize(str(prefix) + ".idx")
    return tokens


def main() -> None:
    started = time.monotonic()
    ctx = runtime.start()
    cfg = ctx.config
    special_tokens = list(cfg.tokenizer.special_tokens)
    tokenizer.check_special_tokens(special_tokens)

    step = resume_step(ctx)
    if step < CORPUS_STEP:
        build_corpus(ctx)
    if step < TOKENIZER_STEP:
        train_tokenizer(ctx)

    from tokenizers import Tokenizer

    corpus_dir = runtime.checkpoint_dir(ctx.work_dir, CORPUS_STEP)
    stats = json.loads((corpus_dir / "stats.json").read_text())
    tok = Tokenizer.from_file(str(runtime.checkpoint_dir(ctx.work_dir, TOKENIZER_STEP) / "tokenizer.json"))
    tokenizer.save(tok, special_tokens, ctx.output_dir / "tokenizer")
    out = ctx.output_dir
    tokens_train = encode(tok, corpus_dir / "train.jsonl", out / TRAIN_PREFIX, stats["documents_train"], "encode_train")
    tokens_valid = encode(tok, corpus_dir / "valid.jsonl", out / VALID_PREFIX, stats["documents_valid"], "encode_valid")
    blend = {"train": ["1.0", TRAIN_PREFIX], "validation": ["1.0", VALID_PREFIX], "test": ["1.0", VALID_PREFIX]}
    (out / "blend.json").write_text(json.dumps(blend, indent=2) + "\n")
    shutil.copyfile(corpus_dir / "valid.jsonl", out / "valid_text.jsonl")

    documents = stats["documents_train"] + stats["documents_valid"]
    runtime.finish(
        ctx,
        "binidx",
        metrics={
            "num_documents": documents,
            "num_documents_train": stats["documents_train"],
            "num_documents_valid": stats["documents_valid"],
            "num_tokens": tokens_train + tokens_valid,
            "num_tokens_train": tokens_train,
            "num_tokens_valid": tokens_valid,
            "vocab_size": tok.get_vocab_size(),
            "corpus_bytes": stats["bytes_train"] + stats["bytes_valid"],
            "seconds": round(time.monotonic() - started, 1),
        },
        metadata={
            "source": str(cfg.corpus.source),
            "duplicates_dropped": stats["duplicates"],
            "too_short_dropped": stats["too_short"],
            "pre_tokenizer": "Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False)])",
            "special_tokens": special_tokens,
            "eos_appended": True,
            "seed": ctx.seed,
        },
    )


if __name__ == "__main__":
    main()

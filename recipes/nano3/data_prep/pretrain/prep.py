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

Encoding (binidx.py) uses `encode.workers` cores (all of them by default): threads in this
process, more processes beyond a few cores, or, with `encode.engine: ray`, Ray tasks over shards
joined in order: the same bytes either way. Shards are files under work_dir named by their bytes
and the tokenizer, so a job killed while encoding encodes again only the shards it had not finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time

from omegaconf import OmegaConf

from recipes.nano3 import runtime
from recipes.nano3.data_prep import binidx, corpus, tokenizer

CORPUS_STEP, TOKENIZER_STEP = 1, 2
TRAIN_PREFIX, VALID_PREFIX = "train_text_document", "valid_text_document"


def fingerprint(ctx: runtime.RecipeContext) -> str:
    """What the checkpoints depend on: a work_dir reused with another config must not resume."""
    relevant = {key: OmegaConf.to_container(ctx.config[key], resolve=True) for key in ("corpus", "tokenizer", "split")}
    taken = ctx.config.run.get("sources")
    relevant["sources"] = OmegaConf.to_container(taken, resolve=True) if taken is not None else {}
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
    taken = (cfg.run.get("sources") or {}).get("corpus")
    expected = max_bytes or (sum(int(f.size) for f in taken.files) if taken is not None else 0)
    folder = runtime.checkpoint_dir(ctx.work_dir, CORPUS_STEP)
    folder.mkdir(parents=True, exist_ok=True)

    def report(stats: corpus.SplitStats) -> None:
        done = stats.bytes_train + stats.bytes_valid
        runtime.progress(done, expected, phase="corpus", documents=stats.documents_train + stats.documents_valid)

    stats = corpus.write_split(
        corpus.texts(cfg.corpus, cfg.run),
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
    """Train the BPE on the train split, or keep the tokenizer of input `tokenizer_from` (a warm
    start's model: its embedding rows are that tokenizer's ids)."""
    tok_cfg = ctx.config.tokenizer
    folder = runtime.checkpoint_dir(ctx.work_dir, TOKENIZER_STEP)
    folder.mkdir(parents=True, exist_ok=True)
    if "tokenizer_from" in ctx.inputs:
        kept = ctx.input_path("tokenizer_from") / "tokenizer.json"
        if not kept.is_file():
            raise SystemExit(f"error: input 'tokenizer_from' at {kept.parent} has no tokenizer.json: expected a checkpoint_hf artifact")
        shutil.copyfile(kept, folder / "tokenizer.json")
        ref = ctx.inputs["tokenizer_from"]
        print(f"tokenizer: kept from {ref.name}:{ref.version} (not trained)", flush=True)
    else:
        documents = corpus.read_texts(runtime.checkpoint_dir(ctx.work_dir, CORPUS_STEP) / "train.jsonl")
        trained = tokenizer.train(documents, int(tok_cfg.vocab_size), list(tok_cfg.special_tokens))
        trained.save(str(folder / "tokenizer.json"))
    complete(ctx, TOKENIZER_STEP)


def encode_settings(ctx: runtime.RecipeContext) -> tuple[str, int]:
    """(engine, workers): without an `encode` block, the process engine on every core."""
    encode_cfg = ctx.config.get("encode") or {}
    engine = str(encode_cfg.get("engine", "process"))
    if engine not in binidx.ENGINES:
        raise SystemExit(f"error: encode.engine must be one of {', '.join(binidx.ENGINES)}, got {engine!r}")
    return engine, int(encode_cfg.get("workers") or os.cpu_count() or 1)


def encode(ctx: runtime.RecipeContext, tok, split: str, prefix: str, total: int, engine: str, workers: int) -> int:
    """One document per JSONL line, eos appended (binidx.py); returns the token count."""
    phase = f"encode_{split}"

    def report(documents: int, tokens: int) -> None:
        runtime.progress(documents, total, phase=phase, tokens=tokens)

    counts = binidx.encode(
        tok,
        runtime.checkpoint_dir(ctx.work_dir, CORPUS_STEP) / f"{split}.jsonl",
        ctx.output_dir / prefix,
        eos=tokenizer.EOS,
        engine=engine,
        workers=workers,
        shard_dir=ctx.work_dir / "shards" / split,
        on_progress=report,
        # auto: the fast BPE engine where it proves HF tokenizers' ids (binidx.py), hf: HF tokenizers.
        bpe=str((ctx.config.get("encode") or {}).get("bpe", "auto")),
    )
    report(counts.documents, counts.tokens)
    return counts.tokens


def source_metadata(cfg) -> dict:  # noqa: ANN001 - DictConfig
    taken = (cfg.run.get("sources") or {}).get("corpus")
    if taken is None:
        return {}
    from recipes.nano3.data_prep.sources import SourceSnapshot

    snapshot = SourceSnapshot.model_validate(OmegaConf.to_container(taken, resolve=True))
    return {"source_url": snapshot.url, "source_shards": len(snapshot.files), "source_fingerprint": snapshot.digest}


def main() -> None:
    started = time.monotonic()
    ctx = runtime.start()
    cfg = ctx.config
    special_tokens = list(cfg.tokenizer.special_tokens)
    tokenizer.check_special_tokens(special_tokens)
    engine, workers = encode_settings(ctx)

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
    with binidx.ray_cluster(workers) if engine == "ray" else contextlib.nullcontext():  # one Ray for both splits
        tokens_train = encode(ctx, tok, "train", TRAIN_PREFIX, stats["documents_train"], engine, workers)
        tokens_valid = encode(ctx, tok, "valid", VALID_PREFIX, stats["documents_valid"], engine, workers)
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
            # The shards read and their fingerprint: which data this corpus is made of.
            **source_metadata(cfg),
            "duplicates_dropped": stats["duplicates"],
            "too_short_dropped": stats["too_short"],
            "pre_tokenizer": "Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False)])",
            "special_tokens": special_tokens,
            "tokenizer_from": f"{ctx.inputs['tokenizer_from'].name}:{ctx.inputs['tokenizer_from'].version}"
            if "tokenizer_from" in ctx.inputs else None,
            "eos_appended": True,
            "seed": ctx.seed,
        },
    )


if __name__ == "__main__":
    main()

# /// script
# requires-python = ">=3.11"
# [tool.runspec]
# name = "nano3/pretrain"
# launch = "torchrun"
# ///
"""Pretrain a NemotronH from scratch on a nano3-pretrain-data artifact (backend hf).

The model's shape comes from the config's `model:` block, its vocabulary from the artifact's
tokenizer. Training windows of `train.seq_length` tokens are drawn at seeded random offsets of the
megatron-core .bin/.idx token stream: documents run into each other (each ends with eos), as in
Megatron's GPT datasets, without their index building (which loops forever on a split with no
documents). A job that stops resumes from its newest complete checkpoint under run.work_dir.
"""

from __future__ import annotations

import os
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from recipes.nano3 import runtime

DATA_FILES = ("blend.json", "tokenizer/tokenizer_config.json")


def check_inputs(ctx: runtime.RecipeContext) -> None:
    """Fail before the slow imports, naming what is wrong."""
    backend = ctx.config.run.get("backend", "hf")
    if backend != "hf":
        raise SystemExit(f"error: this script is the hf backend; run.backend is {backend!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("error: the hf backend trains in one process: launch it with nproc_per_node=1")
    if "model" not in ctx.config:
        raise SystemExit(f"error: {ctx.config_path} has no model: block (the NemotronHConfig fields to train)")
    data = ctx.input_path("data")
    if not data.is_dir():
        raise SystemExit(f"error: input 'data' at {data} does not exist")
    missing = [name for name in DATA_FILES if not (data / name).is_file()]
    if missing:
        raise SystemExit(f"error: input 'data' at {data} has no {missing[0]}: expected a binidx artifact")


def read_blend(data: Path, split: str) -> list[tuple[float, Path]]:
    """blend.json's Megatron-style [weight, prefix, weight, prefix, ...] for one split."""
    entries = json.loads((data / "blend.json").read_text())[split]
    return [(float(entries[i]), data / entries[i + 1]) for i in range(0, len(entries), 2)]


class TokenStream:
    """The concatenated documents of one .bin/.idx pair, read through megatron-core's IndexedDataset."""

    def __init__(self, prefix: Path) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        if not IndexedDataset.exists(str(prefix)):
            raise SystemExit(f"error: {prefix}.bin/.idx not found")
        dataset = IndexedDataset(str(prefix))
        size = int(dataset.sequence_lengths.sum())
        if size == 0:
            raise SystemExit(f"error: {prefix}.bin holds no documents")
        # The .bin holds every document's tokens back to back; the index gives their dtype.
        self.tokens = np.memmap(f"{prefix}.bin", dtype=dataset.index.dtype, mode="r", shape=(size,))

    def __len__(self) -> int:
        return len(self.tokens)

    def window(self, start: int, length: int) -> np.ndarray:
        return self.tokens[start : start + length].astype("int64")


class WindowSampler:
    """Random training windows: a source by its blend weight, then an offset inside it."""

    def __init__(self, sources: list[tuple[float, TokenStream]], seq_length: int) -> None:
        for _, stream in sources:
            if len(stream) <= seq_length:
                raise SystemExit(f"error: a train split has {len(stream)} tokens, fewer than seq_length {seq_length}")
        total = sum(weight for weight, _ in sources)
        self.weights = [weight / total for weight, _ in sources]
        self.streams = [stream for _, stream in sources]
        self.seq_length = seq_length

    def batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        picks = rng.choice(len(self.streams), size=size, p=self.weights)
        rows = [self._one(rng, self.streams[pick]) for pick in picks]
        return np.stack(rows)

    def _one(self, rng: np.random.Generator, stream: TokenStream) -> np.ndarray:
        return stream.window(int(rng.integers(0, len(stream) - self.seq_length + 1)), self.seq_length)


def valid_windows(streams: list[TokenStream], seq_length: int, count: int) -> np.ndarray:
    """The same held-out windows at every evaluation: consecutive, from the start of each source."""
    starts = ((stream, start) for stream in streams for start in range(0, len(stream) - seq_length + 1, seq_length))
    rows = [stream.window(start, seq_length) for stream, start in itertools.islice(starts, count)]
    if not rows:
        raise SystemExit(f"error: the validation split has fewer than seq_length ({seq_length}) tokens")
    return np.stack(rows)


def held_out_loss(model: Any, windows: np.ndarray, batch_size: int, placement: Any) -> float:
    import torch

    model.eval()
    losses = []
    with torch.inference_mode(), placement.autocast():
        for start in range(0, len(windows), batch_size):
            ids = torch.from_numpy(windows[start : start + batch_size]).to(placement.device)
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    model.train()
    return sum(losses) / len(losses)


def warm_start(ctx: runtime.RecipeContext, tokenizer: Any, placement: Any) -> Any:
    """The model of input `init_from`, to continue training; its vocabulary must be the data's."""
    from recipes.nano3 import hf_model

    ref = ctx.inputs["init_from"]
    model, its_tokenizer = hf_model.load_model(ctx.input_path("init_from"), placement)
    if its_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise SystemExit(
            f"error: cannot warm start from {ref.name}:{ref.version}: its vocabulary ({len(its_tokenizer)} tokens) is not "
            f"the data's ({len(tokenizer)}); set data_prep/pretrain's run.tokenizer_from to {ref.name}:{ref.version}'s "
            "alias too, so the data is encoded with its tokenizer"
        )
    print(f"warm start: weights of {ref.name}:{ref.version} ({ref.digest[:19]}…)", flush=True)
    return model


def main() -> None:
    ctx = runtime.start()
    check_inputs(ctx)

    import torch

    from recipes.nano3 import hf_model

    cfg, train = ctx.config, ctx.config.train
    data = ctx.input_path("data")
    placement = hf_model.choose_placement(str(train.get("precision", "fp32")))
    tokenizer = hf_model.load_tokenizer(data / "tokenizer")
    seq_length, batch_size = int(train.seq_length), int(train.micro_batch_size)
    sampler = WindowSampler([(w, TokenStream(p)) for w, p in read_blend(data, "train")], seq_length)
    valid = valid_windows(
        [TokenStream(p) for _, p in read_blend(data, "validation")], seq_length, int(train.eval_iters) * batch_size
    )

    if "init_from" in ctx.inputs:
        model = warm_start(ctx, tokenizer, placement)
    else:
        model = hf_model.build_model(OmegaConf.to_container(cfg.model, resolve=True), tokenizer).to(placement.device)
    hf_model.set_mamba_chunk_size(model, int(train.get("mamba_chunk_size", 128)))
    optimizer, scheduler = hf_model.make_optimizer(model, train)
    state = hf_model.TrainingState(model, optimizer, scheduler, np.random.default_rng(ctx.seed))
    print(f"model: {hf_model.count_parameters(model):,} parameters on {placement.device}", flush=True)

    def evaluate() -> float:
        loss = held_out_loss(model, valid, batch_size, placement)
        print(f"step {state.step}: valid loss {loss:.4f}, perplexity {math.exp(loss):.1f}", flush=True)
        return loss

    def next_batch() -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(sampler.batch(state.sampler, batch_size))
        return {"input_ids": ids, "labels": ids}

    if not hf_model.resume(ctx.work_dir, state):
        state.extra = {"valid_loss_start": evaluate()}
    result = hf_model.run_training(state, next_batch, evaluate, train, ctx.work_dir, placement)

    hf_model.save_model(model, tokenizer, ctx.output_dir)
    start_loss = state.extra["valid_loss_start"]
    runtime.finish(
        ctx,
        "checkpoint_hf",
        metrics={
            "train_loss": None if result.loss is None else round(result.loss, 4),
            "valid_loss_start": round(start_loss, 4),
            "valid_perplexity_start": round(math.exp(start_loss), 2),
            "valid_loss": round(result.evaluation, 4),
            "valid_perplexity": round(math.exp(result.evaluation), 2),
            "tokens_per_s": None if result.tokens_per_s is None else round(result.tokens_per_s),
            "steps": state.step,
        },
        metadata={
            "parameters": hf_model.count_parameters(model),
            "seq_length": seq_length,
            "tokens_seen": state.step * batch_size * seq_length,
            "device": str(placement.device),
            "warm_start": f"{ctx.inputs['init_from'].name}:{ctx.inputs['init_from'].version}" if "init_from" in ctx.inputs else None,
        },
    )


if __name__ == "__main__":
    main()

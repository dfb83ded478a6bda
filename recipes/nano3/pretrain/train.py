# /// script
# requires-python = ">=3.11"
# [tool.runspec]
# name = "nano3/pretrain"
# launch = "torchrun"
# ///
"""Pretrain a NemotronH from scratch on a nano3-pretrain-data artifact (backend hf).

The model's shape comes from the config's `model:` block, its vocabulary from the artifact's
tokenizer. Training windows of `train.seq_length` tokens are drawn at seeded random offsets of the
megatron-core .bin/.idx token stream (recipes.nano3.text_windows). A job that stops resumes from
its newest complete checkpoint under run.work_dir.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from recipes.nano3 import runtime
from recipes.nano3.text_windows import check_artifact, held_out, held_out_loss, train_sampler


def check_inputs(ctx: runtime.RecipeContext) -> None:
    """Fail before the slow imports, naming what is wrong."""
    backend = ctx.config.run.get("backend", "hf")
    if backend != "hf":
        raise SystemExit(f"error: this script is the hf backend; run.backend is {backend!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("error: the hf backend trains in one process: launch it with nproc_per_node=1")
    if "model" not in ctx.config:
        raise SystemExit(f"error: {ctx.config_path} has no model: block (the NemotronHConfig fields to train)")
    check_artifact(ctx, "data")


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
    sampler = train_sampler(data, seq_length)
    valid = held_out(data, seq_length, int(train.eval_iters) * batch_size)

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
    hf_model.save_history(result.history, ctx.output_dir)
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

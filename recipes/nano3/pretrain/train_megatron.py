# /// script
# requires-python = ">=3.10"
# [tool.runspec]
# name = "nano3/pretrain/megatron"
# image = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
# launch = "torchrun"
# ///
"""Pretrain NemotronH with Megatron-Bridge on a nano3-pretrain-data artifact (backend megatron).

The config names a Megatron-Bridge recipe (`recipe.target`, the Nemotron 3 Nano pretrain config
by default); its `train:`, `model:` and `overrides:` blocks are applied on top (see
recipes.nano3.megatron_support). The data is the artifact's .bin/.idx, split by its blend.json;
the tokenizer is the artifact's. Megatron saves its distributed checkpoints under run.work_dir and
resumes from the newest one, so a restarted or time-limited job continues where it stopped. Rank 0
then publishes the last iteration as a checkpoint_megatron artifact.

    torchrun --nproc-per-node 8 recipes/nano3/pretrain/train_megatron.py --config resolved.yaml
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from recipes.nano3 import megatron_support as mb
from recipes.nano3 import runtime


def blend_per_split(data: Path) -> list[tuple[list[str], list[float]] | None]:
    """blend.json's [weight, prefix, …] per split → Megatron's (prefixes, weights) for train, valid, test."""
    blend = json.loads((data / "blend.json").read_text())

    def split(name: str) -> tuple[list[str], list[float]] | None:
        entries = blend.get(name) or []
        if not entries:
            return None
        return [str(data / p) for p in entries[1::2]], [float(w) for w in entries[0::2]]

    return [split("train"), split("validation"), None]


def main() -> None:
    mb.require("megatron.bridge", "transformer_engine", needs="Megatron-Bridge", container=mb.NEMO_CONTAINER)
    ctx = runtime.start()
    data = ctx.input_path("data")
    if not (data / "blend.json").is_file() or not (data / "tokenizer").is_dir():
        raise SystemExit(f"error: input 'data' at {data} has no blend.json and tokenizer/: expected a binidx artifact")

    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    cfg = mb.load_recipe(str(ctx.config.recipe.target))
    cfg.dataset.blend = None
    cfg.dataset.blend_per_split = blend_per_split(data)
    cfg.dataset.split = None
    mb.use_hf_tokenizer(cfg, data / "tokenizer")
    mb.apply_settings(cfg, ctx.config)
    save = mb.use_work_dir(cfg, ctx.work_dir, ctx.seed)
    print(f"pretrain: {ctx.config.recipe.target}, {cfg.train.train_iters} iterations, checkpoints in {save}", flush=True)
    pretrain(config=cfg, forward_step_func=forward_step)

    if not mb.is_rank_zero():
        return
    iteration = mb.publish_checkpoint(save, ctx.output_dir)
    model = OmegaConf.to_container(ctx.config.get("model") or {}, resolve=True)
    mb.write_hf_reference(
        str(ctx.config.hf_reference), ctx.output_dir / mb.HF_REFERENCE_DIR, tokenizer_dir=data / "tokenizer", model=model  # type: ignore[arg-type]
    )
    runtime.finish(
        ctx,
        "checkpoint_megatron",
        metrics={"iterations": iteration},
        metadata={"recipe": str(ctx.config.recipe.target), "hf_reference": str(ctx.config.hf_reference)},
    )


if __name__ == "__main__":
    main()

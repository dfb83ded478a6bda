# /// script
# requires-python = ">=3.10"
# [tool.runspec]
# name = "nano3/sft/megatron"
# image = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
# launch = "torchrun"
# ///
"""Fine-tune the pretrained checkpoint on chat data with Megatron-Bridge (backend megatron).

Starts from the `model` input, a checkpoint_megatron artifact (the megatron pretrain's output):
Megatron-Bridge loads its weights as the pretrained checkpoint, the optimizer starts fresh. The
chats (train.jsonl / valid.jsonl, `messages` per line) are handed to Megatron-Bridge's chat SFT
dataset under the names it expects, with the model's own tokenizer and chat template; only the
assistant turns are learned. Checkpoints and resumption as in pretrain/train_megatron.py.

This is full fine-tuning whatever the recipe's default: the 25.11 container's
`nemotron_3_nano_finetune_config` defaults to LoRA, whose checkpoint holds adapters only, and the
stages after this one (RL, convert) need the full weights. The recipe's dataset (SQuAD from the hub)
is replaced by a FinetuningDatasetConfig over our files.

    torchrun --nproc-per-node 8 recipes/nano3/sft/train_megatron.py --config resolved.yaml
"""

from __future__ import annotations

import os
from pathlib import Path

from recipes.nano3 import megatron_support as mb
from recipes.nano3 import runtime

#: Our data artifact's files → the names Megatron-Bridge's finetuning dataset reads in its dataset_root.
SPLITS = {"train.jsonl": "training.jsonl", "valid.jsonl": "validation.jsonl"}


def dataset_root(data: Path, work_dir: Path) -> Path:
    root = work_dir / "sft_data"
    root.mkdir(parents=True, exist_ok=True)
    for ours, theirs in SPLITS.items():
        if not (data / ours).is_file():
            raise SystemExit(f"error: input 'data' at {data} has no {ours}: expected a training_jsonl artifact")
        link = root / theirs
        if not link.exists():
            os.symlink(data / ours, link)
    return root


def main() -> None:
    mb.require("megatron.bridge", "transformer_engine", needs="Megatron-Bridge", container=mb.NEMO_CONTAINER)
    ctx = runtime.start()
    model = ctx.input_path("model")
    mb.check_megatron_input(model)
    root = dataset_root(ctx.input_path("data"), ctx.work_dir)

    from megatron.bridge.training.config import FinetuningDatasetConfig
    from megatron.bridge.training.finetune import finetune
    from megatron.bridge.training.gpt_step import forward_step

    cfg = mb.load_recipe(str(ctx.config.recipe.target))
    cfg.peft = None
    cfg.checkpoint.pretrained_checkpoint = str(model / mb.MEGATRON_DIR)
    mb.use_hf_tokenizer(cfg, model / mb.HF_REFERENCE_DIR)
    cfg.dataset = FinetuningDatasetConfig(
        dataset_root=str(root),
        seq_length=cfg.model.seq_length,  # apply_settings sets both from train.seq_length
        seed=ctx.seed,
        dataset_kwargs={"chat": True, "use_hf_tokenizer_chat_template": True},
        do_validation=True,
        do_test=False,  # the artifact has no test split
    )
    mb.apply_settings(cfg, ctx.config)
    save = mb.use_work_dir(cfg, ctx.work_dir, ctx.seed)
    print(f"sft: {ctx.config.recipe.target} from {model}, {cfg.train.train_iters} iterations", flush=True)
    finetune(config=cfg, forward_step_func=forward_step)

    if not mb.is_rank_zero():
        return
    iteration = mb.publish_checkpoint(save, ctx.output_dir)
    mb.copy_hf_reference(model / mb.HF_REFERENCE_DIR, ctx.output_dir / mb.HF_REFERENCE_DIR)
    runtime.finish(ctx, "checkpoint_megatron", metrics={"iterations": iteration}, metadata={"recipe": str(ctx.config.recipe.target)})


if __name__ == "__main__":
    main()

"""What the megatron backend's recipes share: their libraries, Megatron-Bridge configs, checkpoints.

These recipes run in the NeMo containers, whose libraries (Megatron-Bridge, NeMo-RL, vLLM) do not
install on a laptop. Each script calls `require` before anything else: where a library is
missing it stops with one line naming the container (or package) it needs, instead of a traceback
from deep inside an import.

A checkpoint_megatron artifact, as these recipes write and read it:

    megatron/        a Megatron distributed checkpoint: iter_NNNNNNN/ + latest_checkpointed_iteration.txt
    hf_reference/    config.json and tokenizer of the HF model it maps to (no weights): what
                     AutoBridge needs to name and shape the tensors when exporting to HF

Training configs name their Megatron-Bridge recipe (`recipe.target`, a function returning a
ConfigContainer); the YAML's `train:` block maps onto its fields (TRAIN_FIELDS), its `model:` block
onto `cfg.model`, and `overrides:` onto any field, applied last as Megatron-Bridge's own examples
apply YAML overrides: through OmegaConf, then back into the dataclasses. Megatron-Bridge skips an
override key its dataclass lacks with a log warning only, so the fields whose names differ between
its versions (the dataset's sequence length, the hybrid layer pattern) are set by name here.

Exporting to HF (`export_to_hf`) is shared by the convert stage and the RL stage; the RL driver runs
it through this module's command line in NeMo-RL's Megatron environment:

    python -m recipes.nano3.megatron_support export-hf MODEL_DIR DEST [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: The containers the megatron backend's recipes are written for (the configs' run.env images).
NEMO_CONTAINER = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
NEMO_RL_CONTAINER = "nvcr.io/nvidia/nemo-rl:v0.4.0.nemotron_3_nano"
#: Exit code of a recipe that cannot start here because a library is missing.
MISSING_LIBRARY_EXIT = 3

MEGATRON_DIR = "megatron"
HF_REFERENCE_DIR = "hf_reference"
TRACKER_FILE = "latest_checkpointed_iteration.txt"

#: `train:` key → ConfigContainer field(s) it sets. `seq_length` also sets the dataset's own field
#: (`sequence_length` on a pretraining GPTDatasetConfig of the 25.11 container, `seq_length` on a
#: finetuning dataset and on newer GPTDatasetConfigs): see `_dataset_length_fields`.
TRAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "seq_length": ("model.seq_length",),
    "global_batch_size": ("train.global_batch_size",),
    "micro_batch_size": ("train.micro_batch_size",),
    "train_iters": ("train.train_iters",),
    "lr": ("optimizer.lr",),
    "min_lr": ("optimizer.min_lr",),
    "warmup_iters": ("scheduler.lr_warmup_iters",),
    "save_interval": ("checkpoint.save_interval",),
    "eval_interval": ("train.eval_interval",),
    "eval_iters": ("train.eval_iters",),
    "log_interval": ("logger.log_interval",),
}
#: `model:` keys of a NemotronH provider → the HF NemotronH config keys they correspond to.
HF_CONFIG_KEYS = {
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",
    "kv_channels": "head_dim",
    "ffn_hidden_size": "intermediate_size",
    "num_moe_experts": "n_routed_experts",
    "moe_ffn_hidden_size": "moe_intermediate_size",
    "moe_shared_expert_intermediate_size": "moe_shared_expert_intermediate_size",
    "moe_router_topk": "num_experts_per_tok",
    "mamba_num_heads": "mamba_num_heads",
    "mamba_head_dim": "mamba_head_dim",
    "mamba_state_dim": "ssm_state_size",
    "hybrid_override_pattern": "hybrid_override_pattern",
}


def require(*modules: str, needs: str, container: str) -> None:
    """Stop with a clear message unless every module imports here. Call before any heavy import."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            script = Path(sys.argv[0]).name or "this recipe"
            print(
                f"error: {script} needs {needs} (module '{module}' is not installed here). "
                f"It runs in the container {container}: give the stage that image "
                f"(run.env.container_image or the profile's container_image) and a GPU profile.",
                file=sys.stderr,
            )
            raise SystemExit(MISSING_LIBRARY_EXIT)


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def load_recipe(target: str) -> Any:
    """`package.module.function` → the ConfigContainer that function returns.

    Recipe names move between Megatron-Bridge versions (the 25.11 container's
    `nemotron_3_nano_finetune_config` is `nemotron_3_nano_sft_config` from Megatron-Bridge 0.4 on),
    so a missing one is reported with the names this container does have.
    """
    module_name, _, function = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: recipe.target {target}: {exc} (is it a module of this container's Megatron-Bridge?)") from None
    if not callable(getattr(module, function, None)):
        known = sorted(name for name in dir(module) if name.endswith("_config") and callable(getattr(module, name)))
        raise SystemExit(
            f"error: recipe.target {target}: this container's Megatron-Bridge has no {function} in {module_name} "
            f"(it has: {', '.join(known) or 'no *_config functions'})"
        )
    return getattr(module, function)()


def use_hf_tokenizer(cfg: Any, tokenizer_dir: Path) -> None:
    """Megatron-Bridge tokenizes with the HF tokenizer in tokenizer_dir (ours, not the recipe's)."""
    cfg.tokenizer.tokenizer_type = "HuggingFaceTokenizer"
    cfg.tokenizer.tokenizer_model = str(tokenizer_dir)
    cfg.tokenizer.vocab_size = None  # the recipe's NullTokenizer size; the model's comes from the tokenizer


def _dataset_length_fields(dataset: Any) -> list[str]:
    return [name for name in ("seq_length", "sequence_length") if hasattr(dataset, name)]


def _model_field(model: Any, key: str) -> str:
    """The 25.11 container's `hybrid_override_pattern` is `hybrid_layer_pattern` in newer providers."""
    if key == "hybrid_override_pattern" and hasattr(model, "hybrid_layer_pattern"):
        return "hybrid_layer_pattern"
    return key


def apply_settings(cfg: Any, config: DictConfig) -> Any:
    """The YAML's train:, model: and overrides: blocks, applied to a Megatron-Bridge ConfigContainer."""
    from megatron.bridge.training.utils.omegaconf_utils import apply_overrides, create_omegaconf_dict_config

    updates: dict[str, Any] = {}
    for key, value in (OmegaConf.to_container(config.get("train") or {}, resolve=True) or {}).items():  # type: ignore[union-attr]
        if key == "precision":
            continue  # the recipe's mixed_precision stays; bf16 is what its kernels expect
        if key not in TRAIN_FIELDS:
            raise SystemExit(f"error: train.{key} is not a setting this recipe knows (known: {', '.join(TRAIN_FIELDS)})")
        for field in TRAIN_FIELDS[key]:
            updates[field] = value
        if key == "seq_length":
            for field in _dataset_length_fields(cfg.dataset):
                updates[f"dataset.{field}"] = value
    model = OmegaConf.to_container(config.get("model") or {}, resolve=True) or {}
    for key, value in model.items():  # type: ignore[union-attr]
        field = _model_field(cfg.model, str(key))
        if not hasattr(cfg.model, field):
            raise SystemExit(f"error: model.{key}: {type(cfg.model).__name__} has no field {field}")
        updates[f"model.{field}"] = value
    dotted = [f"{k}={json.dumps(v)}" for k, v in updates.items()]
    merged, excluded = create_omegaconf_dict_config(cfg)
    merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(dotted), config.get("overrides") or {})
    apply_overrides(cfg, OmegaConf.to_container(merged, resolve=True), excluded)
    return cfg


def use_work_dir(cfg: Any, work_dir: Path, seed: int) -> Path:
    """Megatron saves to and resumes from work_dir/megatron: a restarted job continues."""
    save = work_dir / MEGATRON_DIR
    cfg.checkpoint.save = str(save)
    cfg.checkpoint.load = str(save)
    cfg.logger.tensorboard_dir = str(work_dir / "tensorboard")
    cfg.rng.seed = seed
    return save


def latest_iteration(checkpoint_dir: Path) -> int | None:
    tracker = checkpoint_dir / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    return int(text) if text.isdigit() else None


def publish_checkpoint(source: Path, output_dir: Path) -> int:
    """Copy the newest iteration of a Megatron checkpoint folder (and its tracker) to output_dir/megatron."""
    iteration = latest_iteration(source)
    if iteration is None:
        raise SystemExit(f"error: {source} holds no finished Megatron checkpoint ({TRACKER_FILE} missing)")
    name = f"iter_{iteration:07d}"
    dest = output_dir / MEGATRON_DIR
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source / name, dest / name)
    (dest / TRACKER_FILE).write_text(str(iteration))
    return iteration


def write_hf_reference(reference: str, dest: Path, *, tokenizer_dir: Path, model: dict[str, Any] | None = None) -> None:
    """config.json of the HF model this checkpoint maps to, reshaped by the `model:` block, plus the tokenizer.

    The reference's own Python files (NemotronH is a trust_remote_code model) are copied too: the
    export carries them, so transformers and vLLM can load it without the hub.
    """
    from transformers import AutoConfig, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(reference, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=True)
    for key, value in (model or {}).items():
        if key in HF_CONFIG_KEYS:
            setattr(hf_config, HF_CONFIG_KEYS[key], value)
    if model and "hybrid_override_pattern" in model:
        hf_config.num_hidden_layers = len(str(model["hybrid_override_pattern"]))
    if model:  # a shape of our own: its vocabulary is the tokenizer's (Megatron pads it; the export trims)
        hf_config.vocab_size = len(tokenizer)
    dest.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    source = Path(reference)
    if not source.is_dir():
        from huggingface_hub import snapshot_download

        source = Path(snapshot_download(reference, allow_patterns=["*.py"]))
    for code in source.glob("*.py"):
        if not (dest / code.name).exists():
            shutil.copy2(code, dest / code.name)


def copy_hf_reference(source: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest)


def check_megatron_input(folder: Path, name: str = "model") -> None:
    for part in (MEGATRON_DIR, HF_REFERENCE_DIR):
        if not (folder / part).is_dir():
            raise SystemExit(f"error: input '{name}' at {folder} has no {part}/: expected a checkpoint_megatron artifact")


def export_to_hf(model: Path, dest: Path, *, dtype: str | None = None) -> Path:
    """A checkpoint_megatron folder → an HF folder (safetensors, config, tokenizer, modeling code).

    AutoBridge is built from hf_reference/ with from_hf_pretrained, not from_hf_config: exporting
    saves the reference's artifacts (config, tokenizer), which a bridge made from a bare config
    lacks. The reference holds no weights, so the export writes one model.safetensors. The
    Megatron model itself is rebuilt from the checkpoint's own run_config.yaml.
    """
    check_megatron_input(model)
    import torch
    from megatron.bridge import AutoBridge

    reference = model / HF_REFERENCE_DIR
    bridge = AutoBridge.from_hf_pretrained(str(reference), trust_remote_code=True)
    if dtype is not None:
        bridge.hf_pretrained.config.torch_dtype = getattr(torch, dtype)
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    bridge.export_ckpt(str(model / MEGATRON_DIR), str(staging), source_path=str(reference))
    for item in reference.iterdir():  # whatever the export did not write itself (tokenizer, code)
        if item.is_file() and not (staging / item.name).exists():
            shutil.copy2(item, staging / item.name)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description="Megatron checkpoint tools the megatron recipes share.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-hf", help="Export a checkpoint_megatron folder to an HF folder.")
    export.add_argument("model", type=Path, help="A checkpoint_megatron folder (megatron/ + hf_reference/).")
    export.add_argument("dest", type=Path, help="The HF folder to write.")
    export.add_argument("--dtype", default=None, help="torch dtype of the export's config (e.g. bfloat16).")
    options = parser.parse_args()
    require("megatron.bridge", needs="Megatron-Bridge (AutoBridge)", container=NEMO_CONTAINER)
    export_to_hf(options.model, options.dest, dtype=options.dtype)


if __name__ == "__main__":
    main()

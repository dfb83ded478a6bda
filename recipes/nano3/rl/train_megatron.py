# /// script
# requires-python = ">=3.10"
# [tool.runspec]
# name = "nano3/rl/megatron"
# image = "nvcr.io/nvidia/nemo-rl:v0.4.0.nemotron_3_nano"
# launch = "ray"
# ///
"""GRPO with verifiable rewards, NeMo-RL on a Ray cluster (backend megatron).

Runs as the Ray driver on the head node of the job's Ray cluster (recipes/nano3/ray_cluster.py
starts one across the job's nodes). NeMo-RL's policy starts from an HF model, so the SFT
checkpoint (checkpoint_megatron) is first exported with AutoBridge into run.work_dir. The
NeMo-RL config is the container's GRPO example (`nemo_rl.base_config`), with this config's
`grpo:`/`train:` values and `overrides:` (NeMo-RL's own dotted keys) on top. Rewards come from
NeMo-RL's math environment, which checks each reply against the prompt's `answer`. NeMo-RL
checkpoints into run.work_dir and resumes from there; the last one's policy weights (a Megatron
checkpoint) are published as a checkpoint_megatron artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from recipes.nano3 import megatron_support as mb
from recipes.nano3 import runtime

#: This config's keys → NeMo-RL's.
NEMO_RL_FIELDS = {
    "grpo.num_generations": "grpo.num_generations_per_prompt",
    "grpo.prompts_per_step": "grpo.num_prompts_per_step",
    "grpo.max_completion_length": "policy.generation.max_new_tokens",
    "grpo.temperature": "policy.generation.temperature",
    "grpo.beta": "loss_fn.reference_policy_kl_penalty",
    "train.train_iters": "grpo.max_num_steps",
    "train.lr": "policy.megatron_cfg.optimizer.lr",
    "train.save_interval": "checkpointing.save_period",
    "train.max_sequence_length": "policy.max_total_sequence_length",
}


def export_policy(model: Path, dest: Path) -> Path:
    """The SFT checkpoint as an HF folder: what NeMo-RL's policy and vLLM generation load."""
    if (dest / "config.json").is_file():
        return dest
    from megatron.bridge import AutoBridge
    from transformers import AutoConfig

    bridge = AutoBridge.from_hf_config(AutoConfig.from_pretrained(str(model / mb.HF_REFERENCE_DIR), trust_remote_code=True))
    bridge.export_ckpt(str(model / mb.MEGATRON_DIR), str(dest))
    for item in (model / mb.HF_REFERENCE_DIR).iterdir():  # tokenizer files beside the weights
        if "token" in item.name and not (dest / item.name).exists():
            (dest / item.name).write_bytes(item.read_bytes())
    return dest


def nemo_rl_config(ctx: runtime.RecipeContext, policy: Path, data: Path) -> dict[str, Any]:
    from nemo_rl.utils.config import load_config, parse_hydra_overrides

    cfg = ctx.config
    base = load_config(str(cfg.nemo_rl.base_config))
    updates = [f"policy.model_name={policy}", f"policy.tokenizer.name={policy}"]
    for ours, theirs in NEMO_RL_FIELDS.items():
        value = OmegaConf.select(cfg, ours, default=None)
        if value is not None:
            updates.append(f"{theirs}={json.dumps(value)}")
    updates += [
        f"checkpointing.checkpoint_dir={ctx.work_dir / 'nemo_rl'}",
        f"logger.log_dir={ctx.work_dir / 'logs'}",
        f"cluster.num_nodes={int(cfg.nemo_rl.num_nodes)}",
        f"cluster.gpus_per_node={int(cfg.nemo_rl.gpus_per_node)}",
        f"grpo.seed={ctx.seed}",
        f"data.train_jsonl={data / 'train.jsonl'}",
        f"data.valid_jsonl={data / 'valid.jsonl'}",
    ]
    merged = parse_hydra_overrides(base, [*updates, *(str(o) for o in cfg.get("overrides") or [])])
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def read_prompts(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for number, row in enumerate(rows, start=1):
        if "prompt" not in row or "answer" not in row:
            raise SystemExit(f"error: {path}:{number}: expected {{'prompt': [messages], 'answer': str}}")
    return rows


def rl_dataset(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> Any:
    """Our prompt/answer rows as NeMo-RL datums for the math environment (answer = ground truth)."""
    from nemo_rl.data.datasets import AllTaskProcessedDataset
    from nemo_rl.data.interfaces import TaskDataSpec

    def process(row: dict[str, Any], spec: Any, tok: Any, max_seq_length: int, idx: int) -> dict[str, Any]:
        text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0][:max_seq_length]
        return {
            "message_log": [{"role": "user", "content": text, "token_ids": ids}],
            "length": len(ids),
            "extra_env_info": {"ground_truth": str(row["answer"])},
            "loss_multiplier": 1.0,
            "idx": idx,
            "task_name": "math",
        }

    return AllTaskProcessedDataset(rows, tokenizer, TaskDataSpec(task_name="math"), process, max_seq_length=max_length)


def newest_policy_weights(checkpoint_dir: Path) -> Path:
    steps = sorted(checkpoint_dir.glob("step_*"), key=lambda p: int(p.name.removeprefix("step_")))
    if not steps:
        raise SystemExit(f"error: NeMo-RL wrote no checkpoint under {checkpoint_dir}")
    return steps[-1] / "policy" / "weights"


def main() -> None:
    mb.require("nemo_rl", "ray", "megatron.bridge", needs="NeMo-RL", container=mb.NEMO_RL_CONTAINER)
    ctx = runtime.start()
    model = ctx.input_path("model")
    mb.check_megatron_input(model)
    data = ctx.input_path("data")
    train_rows, valid_rows = read_prompts(data / "train.jsonl"), read_prompts(data / "valid.jsonl")

    from nemo_rl.algorithms.grpo import grpo_train, setup
    from nemo_rl.algorithms.utils import get_tokenizer
    from nemo_rl.distributed.virtual_cluster import init_ray
    from nemo_rl.environments.math_environment import MathEnvironment
    from nemo_rl.models.generation import configure_generation_config

    policy = export_policy(model, ctx.work_dir / "policy_hf")
    config = nemo_rl_config(ctx, policy, data)
    tokenizer = get_tokenizer(config["policy"]["tokenizer"])
    config["policy"]["generation"] = configure_generation_config(config["policy"]["generation"], tokenizer)
    max_length = int(config["policy"]["max_total_sequence_length"])
    init_ray()  # joins the job's Ray cluster (RAY_ADDRESS), or starts one on a single node
    math_env = MathEnvironment.options(num_gpus=0).remote(config.get("env", {}).get("math", {"num_workers": 8}))
    task_to_env = {"math": math_env}
    (policy_model, generation, _cluster, dataloader, val_dataloader, loss_fn, logger, checkpointer, state, master) = setup(
        config, tokenizer, rl_dataset(train_rows, tokenizer, max_length), rl_dataset(valid_rows, tokenizer, max_length)
    )
    grpo_train(
        policy_model, generation, dataloader, val_dataloader, tokenizer, loss_fn,
        task_to_env, task_to_env, logger, checkpointer, state, master,
    )

    weights = newest_policy_weights(ctx.work_dir / "nemo_rl")
    iteration = mb.publish_checkpoint(weights, ctx.output_dir)
    mb.copy_hf_reference(model / mb.HF_REFERENCE_DIR, ctx.output_dir / mb.HF_REFERENCE_DIR)
    runtime.finish(ctx, "checkpoint_megatron", metrics={"steps": int(config["grpo"]["max_num_steps"]), "iteration": iteration})


if __name__ == "__main__":
    main()

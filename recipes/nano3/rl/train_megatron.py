# /// script
# requires-python = ">=3.10"
# [tool.runspec]
# name = "nano3/rl/megatron"
# image = "nvcr.io/nvidia/nemo-rl:v0.4.0.nemotron_3_nano"
# launch = "ray"
# ///
"""GRPO with verifiable rewards, NeMo-RL on a Ray cluster (backend megatron).

Runs as the Ray driver on the head node of the job's Ray cluster (recipes/nano3/ray_cluster.py
starts one across the job's nodes); NeMo-RL lays its workers over every GPU of that cluster, so
the job's nodes and GPUs (the config's run.env) are the only place they are declared.

NeMo-RL's policy starts from an HF model, so the SFT checkpoint (checkpoint_megatron) is first
exported into run.work_dir by recipes.nano3.megatron_support. That runs in NeMo-RL's Megatron
environment: in the NeMo-RL container Megatron-Bridge is installed in the virtual environment of
its Megatron policy workers, not in the driver's.

The NeMo-RL config is the container's GRPO example (`nemo_rl.base_config`), with this config's
`grpo:`/`train:` values and `overrides:` (NeMo-RL's own dotted keys) on top. Rewards come from
NeMo-RL's math environment, which checks each reply against the prompt's `answer`. NeMo-RL
checkpoints into run.work_dir and resumes from there; the last checkpoint's policy weights (a
Megatron-Bridge checkpoint: iter_NNNNNNN/ and its tracker) are published as a checkpoint_megatron.
"""

from __future__ import annotations

import json
import os
import subprocess
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
#: The NeMo-RL actor whose virtual environment holds Megatron-Bridge.
MEGATRON_WORKER = "nemo_rl.models.policy.workers.megatron_policy_worker.MegatronPolicyWorker"
MATH_ENVIRONMENT = "nemo_rl.environments.math_environment.MathEnvironment"
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def megatron_python() -> str:
    """The Python of NeMo-RL's Megatron environment: the container's prefetched one when there is one."""
    from nemo_rl.distributed.ray_actor_environment_registry import get_actor_python_env

    executable = get_actor_python_env(MEGATRON_WORKER)
    if not executable.startswith("uv"):  # NEMO_RL_PY_EXECUTABLES_SYSTEM=1: one environment for all
        return executable
    venvs = os.environ.get("NEMO_RL_VENV_DIR")
    if venvs and (Path(venvs) / MEGATRON_WORKER / "bin" / "python").is_file():
        return str(Path(venvs) / MEGATRON_WORKER / "bin" / "python")
    from nemo_rl.utils.venvs import create_local_venv

    return create_local_venv(executable, MEGATRON_WORKER)


def export_policy(model: Path, dest: Path) -> Path:
    """The SFT checkpoint as an HF folder: what NeMo-RL's policy and vLLM generation load."""
    if (dest / "config.json").is_file():  # exported by an earlier attempt of this job
        return dest
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [megatron_python(), "-m", "recipes.nano3.megatron_support", "export-hf", str(model), str(dest)]
    print(f"rl: exporting {model} for the policy: {' '.join(command)}", flush=True)
    subprocess.run(command, env=env, check=True)
    return dest


def ray_cluster_shape() -> tuple[int, int]:
    """(nodes, GPUs per node) of the Ray cluster this driver joined."""
    import ray

    gpus = [int(node["Resources"].get("GPU", 0)) for node in ray.nodes() if node["Alive"]]
    gpus = [count for count in gpus if count > 0]
    if not gpus:
        raise SystemExit("error: the Ray cluster has no GPUs; the rl stage needs a GPU profile")
    if len(set(gpus)) > 1:
        raise SystemExit(f"error: the Ray cluster's nodes have different GPU counts {gpus}; NeMo-RL needs equal ones")
    return len(gpus), gpus[0]


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON strings are Hydra's quoted strings; paths stay intact


def nemo_rl_config(ctx: runtime.RecipeContext, policy: Path, nodes: int, gpus_per_node: int) -> dict[str, Any]:
    from nemo_rl.utils.config import load_config, parse_hydra_overrides

    # NeMo-RL's example configs use ${mul:...}; its example scripts register the resolver, the library does not.
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
    cfg = ctx.config
    base = load_config(str(cfg.nemo_rl.base_config))
    updates = [_override("policy.model_name", str(policy)), _override("policy.tokenizer.name", str(policy))]
    for ours, theirs in NEMO_RL_FIELDS.items():
        value = OmegaConf.select(cfg, ours, default=None)
        if value is not None:
            updates.append(_override(theirs, value))
    updates += [
        _override("grpo.max_num_epochs", 1_000_000),  # train.train_iters decides when to stop
        _override("grpo.seed", ctx.seed),
        _override("checkpointing.enabled", True),  # the examples ship with it off
        _override("checkpointing.checkpoint_dir", str(ctx.work_dir / "nemo_rl")),
        _override("logger.log_dir", str(ctx.work_dir / "logs")),
        _override("cluster.num_nodes", nodes),
        _override("cluster.gpus_per_node", gpus_per_node),
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
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        too_long = len(ids) > max_seq_length
        return {
            "message_log": [{"role": "user", "content": text, "token_ids": ids[:max_seq_length]}],
            "length": min(len(ids), max_seq_length),
            "extra_env_info": {"ground_truth": str(row["answer"])},
            "loss_multiplier": 0.0 if too_long else 1.0,  # a cut prompt is generated from but not learned
            "idx": idx,
            "task_name": "math",
        }

    return AllTaskProcessedDataset(rows, tokenizer, TaskDataSpec(task_name="math"), process, max_seq_length=max_length)


def newest_step(checkpoint_dir: Path) -> Path:
    """NeMo-RL's newest finished checkpoint (step_N/; unfinished ones are tmp_step_N/)."""
    steps = [p for p in checkpoint_dir.glob("step_*") if p.name.removeprefix("step_").isdigit()]
    if not steps:
        raise SystemExit(f"error: NeMo-RL wrote no checkpoint under {checkpoint_dir}")
    return max(steps, key=lambda p: int(p.name.removeprefix("step_")))


def main() -> None:
    mb.require("nemo_rl", "ray", needs="NeMo-RL", container=mb.NEMO_RL_CONTAINER)
    ctx = runtime.start()
    model = ctx.input_path("model")
    mb.check_megatron_input(model)
    data = ctx.input_path("data")
    train_rows, valid_rows = read_prompts(data / "train.jsonl"), read_prompts(data / "valid.jsonl")

    from nemo_rl.algorithms.grpo import grpo_train, setup
    from nemo_rl.algorithms.utils import get_tokenizer
    from nemo_rl.distributed.ray_actor_environment_registry import get_actor_python_env
    from nemo_rl.distributed.virtual_cluster import init_ray
    from nemo_rl.environments.math_environment import MathEnvironment
    from nemo_rl.models.generation import configure_generation_config

    policy = export_policy(model, ctx.work_dir / "policy_hf")
    init_ray()  # joins the job's Ray cluster (RAY_ADDRESS), or starts one on a single node
    nodes, gpus_per_node = ray_cluster_shape()
    config = nemo_rl_config(ctx, policy, nodes, gpus_per_node)
    print(f"rl: GRPO on {nodes} node(s) x {gpus_per_node} GPU(s), {config['grpo']['max_num_steps']} steps", flush=True)
    tokenizer = get_tokenizer(config["policy"]["tokenizer"])
    config["policy"]["generation"] = configure_generation_config(config["policy"]["generation"], tokenizer)
    max_length = int(config["policy"]["max_total_sequence_length"])
    math_env = MathEnvironment.options(  # type: ignore[attr-defined]
        runtime_env={"py_executable": get_actor_python_env(MATH_ENVIRONMENT), "env_vars": dict(os.environ)}
    ).remote(config["env"]["math"])
    task_to_env = {"math": math_env}
    (policy_model, generation, _cluster, dataloader, val_dataloader, loss_fn, logger, checkpointer, state, master) = setup(
        config, tokenizer, rl_dataset(train_rows, tokenizer, max_length), rl_dataset(valid_rows, tokenizer, max_length)
    )
    grpo_train(
        policy_model, generation, dataloader, val_dataloader, tokenizer, loss_fn,
        task_to_env, task_to_env, logger, checkpointer, state, master,
    )

    step = newest_step(ctx.work_dir / "nemo_rl")
    iteration = mb.publish_checkpoint(step / "policy" / "weights", ctx.output_dir)
    mb.copy_hf_reference(model / mb.HF_REFERENCE_DIR, ctx.output_dir / mb.HF_REFERENCE_DIR)
    runtime.finish(ctx, "checkpoint_megatron", metrics={"steps": int(step.name.removeprefix("step_")), "iteration": iteration})


if __name__ == "__main__":
    main()

# /// script
# requires-python = ">=3.11"
# [tool.runspec]
# name = "nano3/rl"
# launch = "direct"
# ///
"""GRPO on verifiable arithmetic from a nano3-sft-model artifact (backend hf, TRL's GRPOTrainer).

The reward is exact match of the sampled reply against the known answer, which no reply earns
without the right sum; the held-out exact match measured before and after training shows what RL
added on top of SFT. Generation stops at the chat template's end-of-turn token, so a reply is the answer alone.
TRL writes its checkpoints under run.work_dir/checkpoints; a marker written after each save tells a
restarted job which ones are whole, and it resumes from the newest of those.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from recipes.nano3 import runtime

MODEL_FILES = ("config.json", "tokenizer_config.json")
DATA_FILES = ("train.jsonl", "valid.jsonl")
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")


def check_inputs(ctx: runtime.RecipeContext) -> None:
    """Fail before the slow imports, naming what is wrong."""
    backend = ctx.config.run.get("backend", "hf")
    if backend != "hf":
        raise SystemExit(f"error: this script is the hf backend; run.backend is {backend!r}")
    ctx.checked_input("model", MODEL_FILES, "checkpoint_hf")
    ctx.checked_input("data", DATA_FILES, "training_jsonl")


def read_problems(path: Path) -> list[dict[str, Any]]:
    """Rows of {"prompt": [chat messages], "answer": str}; anything else is a wrong input, said early."""
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError as error:
                raise SystemExit(f"error: {path}:{number}: not JSON ({error})") from None
            if row is None:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), list) or "answer" not in row:
                raise SystemExit(f"error: {path}:{number}: expected {{'prompt': [messages], 'answer': ...}}")
            rows.append({"prompt": row["prompt"], "answer": str(row["answer"])})
    if not rows:
        raise SystemExit(f"error: {path} holds no problems")
    return rows


def reply_text(completion: Any) -> str:
    """TRL hands conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list):
        return "".join(message["content"] for message in completion).strip()
    return str(completion).strip()


def exact_match_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    return [float(reply_text(c) == a.strip()) for c, a in zip(completions, answer, strict=True)]


def latest_complete_checkpoint(root: Path) -> tuple[int, Path] | None:
    """TRL names checkpoints checkpoint-N; only those with the completion marker are trusted."""
    done = [
        (int(match.group(1)), path)
        for path in root.glob("checkpoint-*")
        if (match := CHECKPOINT_PATTERN.fullmatch(path.name)) and (path / runtime.CHECKPOINT_DONE).is_file()
    ]
    return max(done) if done else None


def make_callback(checkpoints: Path) -> Any:
    """Progress lines for the orchestrator, and a completion marker once each checkpoint is on disk."""
    from transformers import TrainerCallback

    class Nano3Callback(TrainerCallback):
        def __init__(self) -> None:
            self.last_logs: dict[str, float] = {}
            self.first_tokens: tuple[float, float] | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            if not logs or "loss" not in logs:
                return
            self.last_logs = {**logs, "time": time.perf_counter()}
            self.first_tokens = self.first_tokens or (self.last_logs["time"], float(logs.get("num_tokens", 0)))
            runtime.progress(
                state.global_step,
                state.max_steps,
                loss=round(float(logs["loss"]), 4),
                reward=round(float(logs.get("reward", 0.0)), 4),
            )

        def tokens_per_s(self) -> float | None:
            """Between the first and the last log line of this process, so a resumed job reports its own speed."""
            if self.first_tokens is None or self.last_logs["time"] <= self.first_tokens[0]:
                return None
            tokens = float(self.last_logs.get("num_tokens", 0)) - self.first_tokens[1]
            return tokens / (self.last_logs["time"] - self.first_tokens[0])

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            path = checkpoints / f"checkpoint-{state.global_step}"
            runtime.mark_checkpoint_complete(path)
            print(f"checkpoint saved: step {state.global_step} ({path})", flush=True)

    return Nano3Callback()


def grpo_config(ctx: runtime.RecipeContext, checkpoints: Path, placement: Any) -> Any:
    import torch
    from trl import GRPOConfig

    grpo, train = ctx.config.grpo, ctx.config.train
    return GRPOConfig(
        output_dir=str(checkpoints),
        use_cpu=placement.device.type == "cpu",
        bf16=placement.dtype == torch.bfloat16,
        per_device_train_batch_size=int(train.micro_batch_size),
        num_generations=int(grpo.num_generations),
        max_completion_length=int(grpo.max_completion_length),
        temperature=float(grpo.get("temperature", 1.0)),
        beta=float(grpo.beta),
        # TRL turns activation recomputation on by default; a small model has the memory to skip it.
        activation_checkpointing=bool(train.get("activation_checkpointing", False)),
        learning_rate=float(train.lr),
        lr_scheduler_type=str(train.get("lr_scheduler", "constant")),
        max_steps=int(train.train_iters),
        save_steps=int(train.save_interval),
        save_total_limit=2,
        logging_steps=int(train.get("log_interval", 10)),
        report_to="none",
        disable_tqdm=True,
        seed=ctx.seed,
        data_seed=ctx.seed,
    )


def main() -> None:
    ctx = runtime.start()
    check_inputs(ctx)
    train, evaluation = ctx.config.train, ctx.config.get("eval", {})
    train_rows = read_problems(ctx.input_path("data") / "train.jsonl")
    valid_rows = read_problems(ctx.input_path("data") / "valid.jsonl")[: evaluation.get("limit", 200)]

    import datasets
    from trl import GRPOTrainer

    from recipes.nano3 import hf_model

    placement = hf_model.choose_placement(str(train.get("precision", "fp32")))
    model, tokenizer = hf_model.load_model(
        ctx.input_path("model"), placement, chunk_size=int(train.get("mamba_chunk_size", 16))
    )
    # TRL stops sampling at the generation config's eos ids: the end of the assistant turn is one.
    model.generation_config.eos_token_id = sorted(hf_model.stop_token_ids(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    def held_out_exact_match() -> float:
        return hf_model.exact_match(
            model,
            tokenizer,
            [row["prompt"] for row in valid_rows],
            [row["answer"] for row in valid_rows],
            max_new_tokens=int(ctx.config.grpo.max_completion_length),
            batch_size=int(evaluation.get("batch_size", 256)),
        )

    before = held_out_exact_match()
    print(f"held-out exact match before RL: {before:.3f} ({len(valid_rows)} problems)", flush=True)

    checkpoints = ctx.work_dir / "checkpoints"
    callback = make_callback(checkpoints)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[exact_match_reward],
        args=grpo_config(ctx, checkpoints, placement),
        train_dataset=datasets.Dataset.from_list(train_rows),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    latest = latest_complete_checkpoint(checkpoints)
    if latest is not None:
        print(f"resumed from step {latest[0]}", flush=True)
    trainer.train(resume_from_checkpoint=str(latest[1]) if latest else None)

    after = held_out_exact_match()
    print(f"held-out exact match after RL: {after:.3f}", flush=True)
    hf_model.save_model(trainer.model, tokenizer, ctx.output_dir)
    # TRL keeps its log in the trainer state (a resumed job restores it from the checkpoint).
    history = [
        {"step": entry["step"], "loss": round(float(entry["loss"]), 4), "reward": _rounded(entry.get("reward"), 4)}
        for entry in trainer.state.log_history
        if "loss" in entry and "step" in entry
    ]
    hf_model.save_history(history, ctx.output_dir)
    logs = callback.last_logs
    runtime.finish(
        ctx,
        "checkpoint_hf",
        metrics={
            "exact_match_start": round(before, 4),
            "exact_match": round(after, 4),
            "train_loss": _rounded(logs.get("loss"), 4),
            "reward": _rounded(logs.get("reward"), 4),
            "steps": trainer.state.global_step,
            "tokens_per_s": _rounded(callback.tokens_per_s(), 0),
        },
        metadata={
            "parameters": hf_model.count_parameters(trainer.model),
            "held_out_problems": len(valid_rows),
            "resumed_from_step": latest[0] if latest else None,
            "device": str(placement.device),
        },
    )


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


if __name__ == "__main__":
    main()

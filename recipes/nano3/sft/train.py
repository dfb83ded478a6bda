# /// script
# requires-python = ">=3.11"
# [tool.runspec]
# name = "nano3/sft"
# launch = "torchrun"
# ///
"""Supervised fine-tuning of a nano3 model folder on chat JSONL (backend hf).

Each training line is rendered with the tokenizer's chat template and the loss is taken on the
final assistant answer only: the prompt is context, not something to learn to produce. Held-out
exact match (greedy) is measured before and after, so the artifact says how much SFT bought.

With `replay` set, every step also trains on windows of the pretraining text (input `corpus`, the
pretraining data): a model fine-tuned on chats alone forgets the language it was pretrained on.
The held-out text loss is measured before and after, so the artifact says how much it kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.nano3 import runtime

IGNORE_INDEX = -100  # labels the loss skips (torch's cross-entropy default)
#: input name → (files it must hold, the artifact type that has them)
REQUIRED = {
    "data": (("train.jsonl", "valid.jsonl"), "training_jsonl"),
    "model": (("config.json", "tokenizer_config.json"), "checkpoint_hf"),
}


def check_inputs(ctx: runtime.RecipeContext) -> None:
    """Fail before the slow imports, naming what is wrong."""
    backend = ctx.config.run.get("backend", "hf")
    if backend != "hf":
        raise SystemExit(f"error: this script is the hf backend; run.backend is {backend!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("error: the hf backend trains in one process: launch it with nproc_per_node=1")
    for name, (files, kind) in REQUIRED.items():
        ctx.checked_input(name, files, kind)


def mask_prompt(prompt_ids: Sequence[int], full_ids: Sequence[int]) -> list[int]:
    """Labels for `full_ids` that ignore the prompt it starts with."""
    if list(full_ids[: len(prompt_ids)]) != list(prompt_ids):
        raise ValueError("the rendered conversation does not start with its rendered prompt: check the chat template")
    return [IGNORE_INDEX] * len(prompt_ids) + list(full_ids[len(prompt_ids) :])


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """Each line's messages, the last of them the assistant's answer (the one turn SFT learns)."""
    from recipes.nano3 import hf_model

    conversations = [row.get("messages") for row in hf_model.read_jsonl(path)]
    for number, messages in enumerate(conversations, start=1):
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise SystemExit(f"error: {path}:{number}: expected {{'messages': [user turn, ..., assistant turn]}}")
    return conversations


def tokenize_conversation(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
    """Input ids and labels for a conversation whose last message is the answer to learn."""
    from recipes.nano3 import hf_model

    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    full_ids = tokenizer(text, add_special_tokens=False).input_ids
    return full_ids, mask_prompt(hf_model.render_prompt(tokenizer, messages[:-1]), full_ids)


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right padding: causal layers never look ahead, so the pads change nothing before them."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, targets) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(targets)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@dataclass(frozen=True)
class Replay:
    """Pretraining text SFT trains on beside the chats, and the held-out windows it is scored on."""

    sampler: Any  # recipes.nano3.text_windows.WindowSampler
    held_out: Any  # numpy array of windows
    micro_batch_size: int


def replay_corpus(ctx: runtime.RecipeContext) -> Path | None:
    """The folder of input `corpus` when `replay` asks for it; checked before the slow imports."""
    from recipes.nano3.text_windows import check_artifact

    replay = ctx.config.get("replay")
    if not replay or not int(replay.get("micro_batch_size", 0)):
        return None
    if "corpus" not in ctx.inputs:
        raise SystemExit(f"error: {ctx.config_path}: replay is set but run.corpus names no pretraining data to replay")
    return check_artifact(ctx, "corpus")


def load_replay(ctx: runtime.RecipeContext, corpus: Path, tokenizer: Any) -> Replay:
    from recipes.nano3 import hf_model
    from recipes.nano3.text_windows import held_out, train_sampler

    if hf_model.load_tokenizer(corpus / "tokenizer").get_vocab() != tokenizer.get_vocab():
        raise SystemExit("error: input 'corpus' was encoded with another tokenizer than input 'model': "
                         "replay needs the model's own pretraining data")
    replay = ctx.config.replay
    seq_length = int(replay.seq_length)
    return Replay(train_sampler(corpus, seq_length), held_out(corpus, seq_length, int(replay.get("eval_windows", 16))),
                  int(replay.micro_batch_size))


def main() -> None:
    ctx = runtime.start()
    check_inputs(ctx)
    corpus = replay_corpus(ctx)

    import numpy as np
    import torch

    from recipes.nano3 import hf_model

    train = ctx.config.train
    data = ctx.input_path("data")
    placement = hf_model.choose_placement(str(train.get("precision", "fp32")))
    model, tokenizer = hf_model.load_model(
        ctx.input_path("model"), placement, chunk_size=int(train.get("mamba_chunk_size", 16))
    )
    examples = [tokenize_conversation(tokenizer, messages) for messages in read_conversations(data / "train.jsonl")]
    valid = read_conversations(data / "valid.jsonl")
    prompts, answers = [messages[:-1] for messages in valid], [messages[-1]["content"] for messages in valid]
    print(f"{len(examples)} training conversations, {len(valid)} held-out problems", flush=True)

    replay = None if corpus is None else load_replay(ctx, corpus, tokenizer)
    optimizer, scheduler = hf_model.make_optimizer(model, train)
    state = hf_model.TrainingState(model, optimizer, scheduler, np.random.default_rng(ctx.seed))
    batch_size = min(int(train.micro_batch_size), len(examples))

    def text_loss() -> float | None:
        if replay is None:
            return None
        from recipes.nano3.text_windows import held_out_loss

        return round(held_out_loss(model, replay.held_out, batch_size, placement), 4)

    def evaluate() -> dict[str, float]:
        scores = hf_model.answer_scores(model, tokenizer, prompts, answers)
        print(f"step {state.step}: held-out exact match {scores['exact_match']:.1%}, right number "
              f"{scores['exact_match_number']:.1%} on {len(answers)} problems", flush=True)
        return scores

    def next_batch() -> dict[str, Any] | hf_model.Mixture:
        picks = state.sampler.choice(len(examples), size=batch_size, replace=False)
        chats = collate([examples[i] for i in picks], tokenizer.pad_token_id)
        if replay is None:
            return chats
        text = torch.from_numpy(replay.sampler.batch(state.sampler, replay.micro_batch_size))
        return hf_model.Mixture({"loss": chats, "replay_loss": {"input_ids": text, "labels": text}})

    if not hf_model.resume(ctx.work_dir, state):
        start = evaluate()
        state.extra = {"exact_match_start": start["exact_match"], "exact_match_number_start": start["exact_match_number"],
                       "text_loss_start": text_loss()}
    result = hf_model.run_training(state, next_batch, evaluate, train, ctx.work_dir, placement)

    hf_model.save_model(model, tokenizer, ctx.output_dir)
    hf_model.save_history(result.history, ctx.output_dir)
    runtime.finish(
        ctx,
        "checkpoint_hf",
        metrics={
            "exact_match_start": state.extra["exact_match_start"],
            "exact_match": result.evaluation["exact_match"],
            "exact_match_number_start": state.extra.get("exact_match_number_start"),
            "exact_match_number": result.evaluation["exact_match_number"],
            "text_loss_start": state.extra.get("text_loss_start"),
            "text_loss": text_loss(),
            "train_loss": None if result.loss is None else round(result.loss, 4),
            "tokens_per_s": None if result.tokens_per_s is None else round(result.tokens_per_s),
            "steps": state.step,
        },
        metadata={
            "train_conversations": len(examples),
            "held_out_problems": len(valid),
            "mamba_chunk_size": model.config.chunk_size,
            "device": str(placement.device),
        },
    )


if __name__ == "__main__":
    main()

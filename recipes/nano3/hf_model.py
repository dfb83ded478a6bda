"""What the hf-backend training recipes (pretrain, SFT, RL) share, so the three agree on it.

They must agree on: where a model runs and in which precision, how a NemotronH is built from a
config's `model:` block and the tokenizer it is trained with, the Mamba `chunk_size` (NemotronH's
pure-torch Mamba path pads every sequence to it; 128 on 20-token chat sequences made SFT 6× slower
on CPU than 16, with the same results), what a model folder holds (model and tokenizer together),
what a training checkpoint holds (so a restarted job continues exactly), and how held-out chat
arithmetic is scored (greedy, exact match).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    NemotronHConfig,
    NemotronHForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer

from recipes.nano3 import charts, runtime

#: Closes every chat turn (the data-prep tokenizer's chat template); generation stops on it.
END_OF_TURN = "<end>"
STATE_FILE = "training_state.pt"


# --- where the model runs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Weights stay fp32; `dtype` is the compute precision, applied with autocast."""

    device: torch.device
    dtype: torch.dtype

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def choose_placement(precision: str = "fp32") -> Placement:
    """CUDA when present (bf16 if the config asks for it); on CPU fp32, at most two threads."""
    if torch.cuda.is_available():
        return Placement(torch.device("cuda"), torch.bfloat16 if precision == "bf16" else torch.float32)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return Placement(torch.device("cpu"), torch.float32)


# --- building, loading, saving ---------------------------------------------------------------------


def build_model(model_config: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> NemotronHForCausalLM:
    """A fresh NemotronH whose vocabulary and special token ids are the tokenizer's."""
    config = NemotronHConfig(
        **dict(model_config),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return NemotronHForCausalLM(config)


def set_mamba_chunk_size(model: PreTrainedModel, chunk_size: int) -> None:
    """The mixers copy `chunk_size` when built, so the config alone does not change a loaded model."""
    model.config.chunk_size = chunk_size
    for module in model.modules():
        if isinstance(module, NemotronHMamba2Mixer):
            module.chunk_size = chunk_size


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(folder)


def load_model(
    folder: Path, placement: Placement, chunk_size: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model folder as `save_model` writes it: the model (fp32, on the placement's device) and its tokenizer."""
    if not (folder / "config.json").is_file():
        raise SystemExit(f"error: {folder} is not a model folder (no config.json): expected a checkpoint_hf artifact")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(placement.device)
    if chunk_size is not None:
        set_mamba_chunk_size(model, chunk_size)
    return model, load_tokenizer(folder)


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Model and tokenizer in one folder: what every checkpoint_hf consumer loads with the Auto classes.

    `generate()` then stops at the end of a chat turn, not only at eos.
    """
    model.generation_config.eos_token_id = sorted(stop_token_ids(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder, save_jinja_files=False)  # the chat template in tokenizer_config.json


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- optimisation and checkpoints ----------------------------------------------------------------


def make_optimizer(
    model: torch.nn.Module, train: Mapping[str, Any]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warmup, then cosine from `lr` down to `min_lr` at `train_iters`."""
    lr, min_lr = float(train["lr"]), float(train.get("min_lr", 0.0))
    warmup, total = int(train.get("warmup_iters", 0)), int(train["train_iters"])

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return (min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))) / lr

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=float(train.get("weight_decay", 0.0))
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


@dataclass
class TrainingState:
    """Everything a restarted job needs to continue as if it had never stopped."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    #: Draws the training batches; saved so a resumed job sees the batches it would have seen.
    sampler: np.random.Generator
    step: int = 0
    #: Numbers the recipe carries across restarts (metrics measured before training, for one).
    extra: dict[str, Any] | None = None


def save_checkpoint(work_dir: Path, state: TrainingState) -> Path:
    path = runtime.checkpoint_dir(work_dir, state.step)
    path.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": state.step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "sampler": state.sampler.bit_generator.state,
        "rng": _rng_states(),
        "extra": state.extra or {},
    }
    torch.save(payload, path / STATE_FILE)
    runtime.mark_checkpoint_complete(path)
    runtime.prune_checkpoints(work_dir)
    print(f"checkpoint saved: step {state.step} ({path})", flush=True)
    return path


def resume(work_dir: Path, state: TrainingState) -> bool:
    """Load the newest complete checkpoint into `state`, if there is one."""
    latest = runtime.latest_checkpoint(work_dir)
    if latest is None:
        return False
    step, path = latest
    # Our own file, holding numpy RNG states besides tensors: not loadable with weights_only.
    payload = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.sampler.bit_generator.state = payload["sampler"]
    _restore_rng_states(payload["rng"])
    state.step, state.extra = payload["step"], payload["extra"]
    print(f"resumed from step {step}", flush=True)
    return True


def _rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: Mapping[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Mixture:
    """Batches of one optimizer step whose losses add up: SFT's chats and the text it replays.
    Each part's loss is logged under its name (the first part's as `loss`)."""

    parts: Mapping[str, Batch]

    @classmethod
    def of(cls, batch: Batch | Mixture) -> Mixture:
        """A plain batch is a mixture of one part, `loss`."""
        return batch if isinstance(batch, Mixture) else cls({"loss": batch})


@dataclass(frozen=True)
class TrainingResult:
    #: Mean training loss over the last few steps; None when a resumed job had nothing left to do.
    loss: float | None
    #: Tokens (padding excluded) per second of optimizer steps, evaluations and checkpoints left out.
    tokens_per_s: float | None
    #: What `evaluate` returned after the last step.
    evaluation: Any
    #: One entry per log line since step 0 (restarts included): step, each part's mean loss, lr.
    history: list[dict[str, float]]


def run_training(
    state: TrainingState,
    next_batch: Callable[[], Batch | Mixture],
    evaluate: Callable[[], Any],
    train: Mapping[str, Any],
    work_dir: Path,
    placement: Placement,
) -> TrainingResult:
    """Step until `train_iters`: progress every `log_interval` steps, `evaluate` every
    `eval_interval`, a checkpoint every `save_interval`, all three after the last step."""
    total, clip_grad = int(train["train_iters"]), float(train.get("clip_grad", 1.0))
    every = {key: int(train.get(key, total)) for key in ("log_interval", "eval_interval", "save_interval")}
    seconds, tokens, recent, evaluation = 0.0, 0, [], None
    state.extra = state.extra or {}
    history: list[dict[str, float]] = state.extra.setdefault("history", [])
    state.model.train()
    while state.step < total:
        started = time.perf_counter()
        parts = {name: {k: v.to(placement.device) for k, v in part.items()}
                 for name, part in Mixture.of(next_batch()).parts.items()}
        recent = [*recent[-9:], train_step(state, Mixture(parts), placement, clip_grad)]
        seconds += time.perf_counter() - started
        tokens += sum(
            int(part["attention_mask"].sum()) if "attention_mask" in part else part["input_ids"].numel()
            for part in parts.values()
        )
        state.step += 1
        due = {key for key, interval in every.items() if state.step % interval == 0 or state.step == total}
        if "log_interval" in due:
            means = {name: round(sum(r[name] for r in recent) / len(recent), 4) for name in recent[0]}
            lr = float(f"{state.scheduler.get_last_lr()[0]:.3g}")
            history.append({"step": state.step, **means, "lr": lr})
            runtime.progress(state.step, total, **means, lr=lr, tokens_per_s=round(tokens / seconds))
        if "eval_interval" in due:
            evaluation = evaluate()
        if "save_interval" in due:
            save_checkpoint(work_dir, state)
    return TrainingResult(
        loss=sum(r["loss"] for r in recent) / len(recent) if recent else None,
        tokens_per_s=tokens / seconds if tokens else None,
        evaluation=evaluate() if evaluation is None else evaluation,
        history=history,
    )


def train_step(state: TrainingState, batch: Batch | Mixture, placement: Placement, clip_grad: float) -> dict[str, float]:
    """One optimizer step on a batch (or a mixture of them) with `labels` (-100 where no loss is
    wanted); returns each part's loss."""
    with placement.autocast():
        losses = {name: state.model(**part).loss for name, part in Mixture.of(batch).parts.items()}
    state.optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip_grad)
    state.optimizer.step()
    state.scheduler.step()
    return {name: loss.item() for name, loss in losses.items()}


def save_history(history: Sequence[Mapping[str, float]], folder: Path) -> None:
    """The training curve, kept in the model's folder: eval draws every stage's from there."""
    (folder / charts.HISTORY_FILE).write_text(json.dumps(list(history)) + "\n")


# --- chat data and exact match -------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist")
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The chat template's prompt for the next assistant turn, as token ids."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)}
    return {i for i in ids if i is not None and i != tokenizer.unk_token_id}


@torch.inference_mode()
def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[Mapping[str, str]]],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 256,
) -> list[str]:
    """The model's greedy reply to each chat prompt, up to its end-of-turn token.

    Prompts are batched by token length, so no batch needs padding (left padding would change
    what the Mamba layers see) and answers never depend on the batch they landed in.
    """
    encoded = [render_prompt(tokenizer, p) for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(encoded):
        by_length[len(ids)].append(index)
    stops = stop_token_ids(tokenizer)
    answers = [""] * len(prompts)
    was_training = model.training
    model.eval()
    for indices in by_length.values():
        for batch in _chunks(indices, batch_size):
            prompt_ids = torch.tensor([encoded[i] for i in batch], device=model.device)
            for index, row in zip(batch, _greedy_continue(model, prompt_ids, max_new_tokens, stops)):
                answers[index] = tokenizer.decode(row, skip_special_tokens=True).strip()
    model.train(was_training)
    return answers


def exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[Mapping[str, str]]],
    answers: Sequence[str],
    **generation: int,
) -> float:
    return answer_scores(model, tokenizer, prompts, answers, **generation)["exact_match"]


def answer_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[Mapping[str, str]]],
    answers: Sequence[str],
    **generation: int,
) -> dict[str, float]:
    """Two scores of the same greedy replies, as eval's arithmetic task has them: `exact_match`,
    the reply is the answer; `exact_match_number`, its first number is (whatever the format)."""
    replies = greedy_answers(model, tokenizer, prompts, **generation)
    first_numbers = [match.group(0) if (match := re.search(r"\d+", r)) else None for r in replies]
    count = max(1, len(answers))
    return {
        "exact_match": sum(r == a.strip() for r, a in zip(replies, answers, strict=True)) / count,
        "exact_match_number": sum(n == a.strip() for n, a in zip(first_numbers, answers, strict=True)) / count,
    }


def _greedy_continue(
    model: PreTrainedModel, prompt_ids: torch.Tensor, max_new_tokens: int, stops: set[int]
) -> list[list[int]]:
    """Full forward passes without a cache: for answers of a few tokens it costs little and is exact."""
    ids, stop = prompt_ids, torch.tensor(sorted(stops), device=prompt_ids.device)
    finished = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        next_ids = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(dim=-1)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        finished |= torch.isin(next_ids, stop)
        if finished.all():
            break
    return [_until_stop(row, stops) for row in ids[:, prompt_ids.shape[1] :].tolist()]


def _until_stop(ids: list[int], stops: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stops:
            return ids[:position]
    return ids


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

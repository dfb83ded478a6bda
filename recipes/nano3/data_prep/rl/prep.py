# /// script
# requires-python = ">=3.11"
# [tool.runspec]
# name = "nano3/data_prep/rl"
# launch = "direct"
# ///
"""Write RL prompts with verifiable answers, train.jsonl and valid.jsonl, disjoint from the SFT held-out set.

Offline (source: arithmetic) the prompts are two-digit additions whose answer a reward function
checks by exact match. Eval scores the RL model on the SFT held-out problems, so both files here
draw from pools of recipes.nano3.data_prep.arithmetic that exclude them, whatever the seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

from recipes.nano3 import runtime
from recipes.nano3.data_prep import arithmetic, hub, jsonl


def arithmetic_split(ctx: runtime.RecipeContext) -> dict[str, Any]:
    cfg = ctx.config
    low, high = int(cfg.get("min_operand", 10)), int(cfg.max_operand)
    rng = random.Random(ctx.seed)
    valid = arithmetic.held_out(arithmetic.RL_VALID, int(cfg.held_out), low, high, rng)
    train = arithmetic.training(int(cfg.prompts), low, high, rng)
    jsonl.write(ctx.output_dir / "train.jsonl", map(arithmetic.prompt_record, train))
    jsonl.write(ctx.output_dir / "valid.jsonl", map(arithmetic.prompt_record, valid))
    return {
        "train_prompts": len(train),
        "valid_prompts": len(valid),
        "unique_train_problems": len(set(train)),
        "train_pool": len(arithmetic.pool(arithmetic.TRAIN, low, high)),
    }


def as_messages(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def hub_prompts(datasets: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Hub RL sets nest prompt and answer differently; the config names both fields (dotted paths)."""
    for entry in datasets:
        for row in hub.rows(entry["name"], entry.get("split", "train")):
            answer = hub.field(row, entry.get("answer_field", "answer"))
            if answer is not None:
                prompt = hub.field(row, entry.get("prompt_field", "prompt"))
                yield {"prompt": as_messages(prompt), "answer": str(answer)}


def hub_split(ctx: runtime.RecipeContext) -> dict[str, Any]:
    cfg = ctx.config
    limit = cfg.get("prompts")
    train, valid = hub.write_split(
        hub_prompts(cfg.datasets),
        ctx.output_dir / "train.jsonl",
        ctx.output_dir / "valid.jsonl",
        held_out=int(cfg.held_out),
        limit=None if limit is None else int(limit),
        seed=ctx.seed,
    )
    return {"train_prompts": train, "valid_prompts": valid}


def main() -> None:
    ctx = runtime.start()
    source = ctx.config.source
    builders = {"arithmetic": arithmetic_split, "hf": hub_split}
    if source not in builders:
        raise SystemExit(f"error: source must be one of {sorted(builders)}, got {source!r}")
    metrics = builders[source](ctx)
    runtime.progress(1, 1, **metrics)
    if not metrics["train_prompts"] or not metrics["valid_prompts"]:
        raise SystemExit(f"error: empty split ({metrics}); raise prompts/held_out")
    runtime.finish(ctx, "training_jsonl", metrics=metrics, metadata={"source": str(source), "seed": ctx.seed})


if __name__ == "__main__":
    main()

# /// script
# requires-python = ">=3.11"
# [tool.runspec]
# name = "nano3/data_prep/sft"
# launch = "direct"
# ///
"""Write chat-format SFT data, train.jsonl and valid.jsonl, whose held-out problems never appear in train.

Offline (source: arithmetic) the chats are two-digit additions, which a tiny model learns in a
minute and which eval can score by exact match; the held-out problems come from the pool that
recipes.nano3.data_prep.arithmetic reserves for SFT eval, so RL never trains on them either.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

from recipes.nano3 import runtime
from recipes.nano3.data_prep import arithmetic, hub, jsonl

ROLES = ("user", "assistant")


def arithmetic_split(ctx: runtime.RecipeContext) -> dict[str, Any]:
    cfg = ctx.config
    low, high = int(cfg.get("min_operand", 10)), int(cfg.max_operand)
    rng = random.Random(ctx.seed)
    valid = arithmetic.held_out(arithmetic.SFT_VALID, int(cfg.held_out), low, high, rng)
    train = arithmetic.training(int(cfg.examples), low, high, rng)
    taught = arithmetic.demonstrations(train, float(cfg.get("teacher", {}).get("period_share", 0.0)), rng)
    jsonl.write(ctx.output_dir / "train.jsonl", (arithmetic.chat_record(p, answer) for p, answer in taught))
    jsonl.write(ctx.output_dir / "valid.jsonl", map(arithmetic.chat_record, valid))
    return {
        "train_examples": len(train),
        "answers_with_period": sum(answer != p.answer for p, answer in taught),
        "valid_examples": len(valid),
        "unique_train_problems": len(set(train)),
        "train_pool": len(arithmetic.pool(arithmetic.TRAIN, low, high)),
    }


def hub_chats(datasets: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Keep the user and assistant turns (the nano3 chat template has no others) of chats that have both."""
    for entry in datasets:
        for row in hub.rows(entry["name"], entry.get("split", "train")):
            turns = [
                {"role": m["role"], "content": m["content"]}
                for m in hub.field(row, entry.get("messages_field", "messages"))
                if m.get("role") in ROLES and isinstance(m.get("content"), str)
            ]
            if {t["role"] for t in turns} == set(ROLES) and turns[0]["role"] == "user":
                yield {"messages": turns}


def hub_split(ctx: runtime.RecipeContext) -> dict[str, Any]:
    cfg = ctx.config
    limit = cfg.get("examples")
    train, valid = hub.write_split(
        hub_chats(cfg.datasets),
        ctx.output_dir / "train.jsonl",
        ctx.output_dir / "valid.jsonl",
        held_out=int(cfg.held_out),
        limit=None if limit is None else int(limit),
        seed=ctx.seed,
    )
    return {"train_examples": train, "valid_examples": valid}


def main() -> None:
    ctx = runtime.start()
    source = ctx.config.source
    builders = {"arithmetic": arithmetic_split, "hf": hub_split}
    if source not in builders:
        raise SystemExit(f"error: source must be one of {sorted(builders)}, got {source!r}")
    metrics = builders[source](ctx)
    runtime.progress(1, 1, **metrics)
    if not metrics["train_examples"] or not metrics["valid_examples"]:
        raise SystemExit(f"error: empty split ({metrics}); raise examples/held_out")
    runtime.finish(ctx, "training_jsonl", metrics=metrics, metadata={"source": str(source), "seed": ctx.seed})


if __name__ == "__main__":
    main()

"""Two-digit addition as chat problems with verifiable answers, for the SFT and RL data recipes.

Eval scores the final, RL-trained model on the SFT held-out problems, so RL must never train on
them, and RL's own held-out problems must be new to SFT. A hash partition of the problem space,
fixed here rather than by either recipe's seed, splits it into three disjoint pools that both
scripts agree on without reading each other's output (and whatever seed the orchestrator gives
them). The seeds only choose and order problems inside a pool.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

TRAIN, SFT_VALID, RL_VALID = "train", "sft_valid", "rl_valid"
#: One bucket in ten is held out for SFT eval, one for RL eval, the rest is for training.
_BUCKETS = 10


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


def pool_of(problem: Problem) -> str:
    """Which pool a problem belongs to; a+b and b+a share one, as knowing either gives the other away."""
    key = f"{min(problem.a, problem.b)}+{max(problem.a, problem.b)}".encode()
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % _BUCKETS
    return {0: SFT_VALID, 1: RL_VALID}.get(bucket, TRAIN)


def pool(name: str, min_operand: int, max_operand: int) -> list[Problem]:
    if not 0 <= min_operand <= max_operand:
        raise SystemExit(f"error: operands need 0 <= min_operand <= max_operand, got {min_operand}..{max_operand}")
    span = range(min_operand, max_operand + 1)
    return [p for p in (Problem(a, b) for a in span for b in span) if pool_of(p) == name]


def held_out(name: str, count: int, min_operand: int, max_operand: int, rng: random.Random) -> list[Problem]:
    """Distinct problems, a+b and b+a counted once, each written in a random order."""
    candidates = [p for p in pool(name, min_operand, max_operand) if p.a <= p.b]
    if count > len(candidates):
        raise SystemExit(
            f"error: held_out={count} but operands {min_operand}..{max_operand} leave only {len(candidates)} "
            f"{name} problems; lower held_out or widen the operand range"
        )
    chosen = rng.sample(candidates, count)
    return [Problem(p.b, p.a) if rng.random() < 0.5 else p for p in chosen]


def training(count: int, min_operand: int, max_operand: int, rng: random.Random) -> list[Problem]:
    """Shuffled passes over the train pool: every problem is seen once before any is repeated."""
    candidates = pool(TRAIN, min_operand, max_operand)
    if count > 0 and not candidates:
        raise SystemExit(f"error: operands {min_operand}..{max_operand} leave no training problems")
    chosen: list[Problem] = []
    while len(chosen) < count:
        rng.shuffle(candidates)
        chosen.extend(candidates[: count - len(chosen)])
    return chosen


def demonstrations(problems: list[Problem], period_share: float, rng: random.Random) -> list[tuple[Problem, str]]:
    """Each problem with the answer its teacher writes: right, but in a `period_share` of them
    followed by a period. The verifier (RL's reward, eval's exact match) wants the bare number, as
    a grader of one format does; data from teachers of mixed habits is common, and an imitation
    of it writes the period about as often, which leaves RL's reward something to fix."""
    if not 0.0 <= period_share <= 1.0:
        raise SystemExit(f"error: teacher.period_share must be within 0..1, got {period_share}")
    return [(p, p.answer + "." if rng.random() < period_share else p.answer) for p in problems]


def chat_record(problem: Problem, answer: str | None = None) -> dict:
    return {
        "messages": [
            {"role": "user", "content": problem.prompt},
            {"role": "assistant", "content": problem.answer if answer is None else answer},
        ]
    }


def prompt_record(problem: Problem) -> dict:
    return {"prompt": [{"role": "user", "content": problem.prompt}], "answer": problem.answer}

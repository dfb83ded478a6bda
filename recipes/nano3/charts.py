"""PNG charts of a run: every checkpoint's held-out scores, and each training stage's loss curve.

Drawn by the eval job (matplotlib, no display) into its artifact folder, so they travel with the
numbers they show; the orchestrator links them from the eval's Prefect artifact and W&B run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Where a training recipe keeps its loss curve, in the model folder it writes.
HISTORY_FILE = "train_history.json"
#: Bars of the ladder chart: (metric, axis label, which way is better).
SCORES = (
    ("exact_match", "reply is exactly the sum (higher is better)"),
    ("exact_match_number", "sum right, any format (higher is better)"),
    ("bits_per_byte", "text bits per byte (lower is better)"),
)
#: Besides `step` and `lr`, what a history entry may hold, and how the chart calls it.
CURVES = {"loss": "training loss", "replay_loss": "replayed text loss", "reward": "mean reward"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> Path:
    # No timestamp in the file: the same numbers draw the same bytes.
    figure.savefig(path, dpi=100, metadata={"Software": None})
    _pyplot().close(figure)
    return path


def draw_ladder(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One bar per checkpoint for each score, in the rows' (training) order."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(SCORES), figsize=(4.2 * len(SCORES), 3.6), layout="constrained")
    labels = [str(row["checkpoint"]) for row in rows]
    for axis, (metric, title) in zip(axes, SCORES, strict=True):
        values = [row.get(metric) for row in rows]
        bars = axis.bar(labels, [0 if v is None else v for v in values], color="#76b900")
        for bar, value in zip(bars, values, strict=True):
            axis.annotate("n/a" if value is None else f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelrotation=20)
    figure.suptitle("nano3: every checkpoint on the same held-out tasks")
    return _save(figure, path)


def draw_loss_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """One panel per training stage: its logged losses (and RL's reward, on a second axis) by step."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(histories), figsize=(4.2 * len(histories), 3.4), layout="constrained", squeeze=False)
    for axis, (stage, history) in zip(axes[0], histories.items(), strict=True):
        steps = [entry["step"] for entry in history]
        for key, label in CURVES.items():
            values = [entry.get(key) for entry in history]
            if all(v is None for v in values):
                continue
            target = axis.twinx() if key == "reward" else axis
            target.plot(steps, values, label=label, color="#d62728" if key == "reward" else None)
            target.set_ylabel(label if key == "reward" else "loss", fontsize=8)
            if key == "reward":
                target.legend(loc="upper right", fontsize=7)
        axis.set_title(stage, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.legend(loc="upper left", fontsize=7)
    figure.suptitle("nano3: training curves")
    return _save(figure, path)

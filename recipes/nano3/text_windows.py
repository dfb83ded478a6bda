"""Windows of pretraining text from a nano3-pretrain-data artifact (megatron-core .bin/.idx).

Pretraining trains on them; SFT replays them (so it does not forget the language it started
from). Documents run into each other (each ends with eos), as in Megatron's GPT datasets, without
their index building (which loops forever on a split with no documents).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

#: What a nano3-pretrain-data artifact holds that these readers need.
DATA_FILES = ("blend.json", "tokenizer/tokenizer_config.json")


def check_artifact(ctx: Any, name: str) -> Path:
    """Input `name`'s folder, a nano3-pretrain-data artifact; one error naming what is missing."""
    return ctx.checked_input(name, DATA_FILES, "binidx")


def read_blend(data: Path, split: str) -> list[tuple[float, Path]]:
    """blend.json's Megatron-style [weight, prefix, weight, prefix, ...] for one split."""
    entries = json.loads((data / "blend.json").read_text())[split]
    return [(float(entries[i]), data / entries[i + 1]) for i in range(0, len(entries), 2)]


class TokenStream:
    """The concatenated documents of one .bin/.idx pair, read through megatron-core's IndexedDataset."""

    def __init__(self, prefix: Path) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        if not IndexedDataset.exists(str(prefix)):
            raise SystemExit(f"error: {prefix}.bin/.idx not found")
        dataset = IndexedDataset(str(prefix))
        size = int(dataset.sequence_lengths.sum())
        if size == 0:
            raise SystemExit(f"error: {prefix}.bin holds no documents")
        # The .bin holds every document's tokens back to back; the index gives their dtype.
        self.tokens = np.memmap(f"{prefix}.bin", dtype=dataset.index.dtype, mode="r", shape=(size,))

    def __len__(self) -> int:
        return len(self.tokens)

    def window(self, start: int, length: int) -> np.ndarray:
        return self.tokens[start : start + length].astype("int64")


class WindowSampler:
    """Random training windows: a source by its blend weight, then an offset inside it."""

    def __init__(self, sources: list[tuple[float, TokenStream]], seq_length: int) -> None:
        for _, stream in sources:
            if len(stream) <= seq_length:
                raise SystemExit(f"error: a train split has {len(stream)} tokens, fewer than seq_length {seq_length}")
        total = sum(weight for weight, _ in sources)
        self.weights = [weight / total for weight, _ in sources]
        self.streams = [stream for _, stream in sources]
        self.seq_length = seq_length

    def batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        picks = rng.choice(len(self.streams), size=size, p=self.weights)
        rows = [self._one(rng, self.streams[pick]) for pick in picks]
        return np.stack(rows)

    def _one(self, rng: np.random.Generator, stream: TokenStream) -> np.ndarray:
        return stream.window(int(rng.integers(0, len(stream) - self.seq_length + 1)), self.seq_length)


def valid_windows(streams: list[TokenStream], seq_length: int, count: int) -> np.ndarray:
    """The same held-out windows at every evaluation: consecutive, from the start of each source."""
    starts = ((stream, start) for stream in streams for start in range(0, len(stream) - seq_length + 1, seq_length))
    rows = [stream.window(start, seq_length) for stream, start in itertools.islice(starts, count)]
    if not rows:
        raise SystemExit(f"error: the validation split has fewer than seq_length ({seq_length}) tokens")
    return np.stack(rows)


def held_out(data: Path, seq_length: int, count: int) -> np.ndarray:
    """`count` held-out windows of the artifact's validation split, the same at every evaluation."""
    return valid_windows([TokenStream(prefix) for _, prefix in read_blend(data, "validation")], seq_length, count)


def held_out_loss(model: Any, windows: np.ndarray, batch_size: int, placement: Any) -> float:
    import torch

    model.eval()
    losses = []
    with torch.inference_mode(), placement.autocast():
        for start in range(0, len(windows), batch_size):
            ids = torch.from_numpy(windows[start : start + batch_size]).to(placement.device)
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    model.train()
    return sum(losses) / len(losses)


def train_sampler(data: Path, seq_length: int) -> WindowSampler:
    """Training windows over the artifact's train split, by its blend weights."""
    return WindowSampler([(w, TokenStream(p)) for w, p in read_blend(data, "train")], seq_length)

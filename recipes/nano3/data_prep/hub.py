"""Hub datasets for the cluster-scale configs.

Without network access `datasets` retries for half a minute and then raises a ConnectionError
whose text does not say which config asked for the hub; this module turns any failure to read a
hub dataset into one message naming the dataset and the offline alternative.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

OFFLINE_HINT = "source 'hf' needs access to the hub; offline, run the tiny config (data made from installed files)"


def rows(name: str, split: str) -> Iterator[dict[str, Any]]:
    """Stream a hub dataset's rows; every failure, at load or halfway through, becomes one clear error."""
    import datasets

    try:
        yield from datasets.load_dataset(name, split=split, streaming=True)
    except Exception as exc:
        raise SystemExit(f"error: cannot read hub dataset {name} (split {split}): {type(exc).__name__}: {exc}\n"
                         f"{OFFLINE_HINT}") from exc


def field(row: dict[str, Any], dotted: str) -> Any:
    """`a.b` reads row["a"]["b"]: hub schemas nest what a recipe needs at different depths."""
    value: Any = row
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise SystemExit(f"error: hub row has no field '{dotted}' (keys: {sorted(row)}); name it in the config")
        value = value[key]
    return value


def write_split(
    records: Iterable[dict[str, Any]],
    train_path: Path,
    valid_path: Path,
    *,
    held_out: int,
    limit: int | None,
    seed: int,
) -> tuple[int, int]:
    """Stream records into train/valid JSONL: valid takes a seeded-hash 1% sample until it holds `held_out`.

    Deciding by hash, not by position, keeps the held-out set spread over the whole dataset, and
    dropping exact duplicates keeps a copy of a held-out record out of train.
    """
    seen: set[bytes] = set()
    counts = [0, 0]
    with train_path.open("w", encoding="utf-8") as train, valid_path.open("w", encoding="utf-8") as valid:
        for record in records:
            line = json.dumps(record, ensure_ascii=False)
            digest = hashlib.sha256(f"{seed}:{line}".encode()).digest()
            if digest in seen:
                continue
            seen.add(digest)
            to_valid = counts[1] < held_out and int.from_bytes(digest[:8], "big") % 100 == 0
            if not to_valid and limit is not None and counts[0] >= limit:
                if counts[1] >= held_out:
                    break
                continue
            (valid if to_valid else train).write(line + "\n")
            counts[to_valid] += 1
    return counts[0], counts[1]

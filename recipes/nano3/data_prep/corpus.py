"""The pretraining corpus: documents from a source, deduplicated, capped, and split train/valid.

Offline, the source is the docstrings of the installed Python standard library and packages:
real English prose about code, present on every machine that can run the recipe, and the same
bytes on every run of the same environment. Files are read in sorted order and reading stops
once the byte cap is reached, so a small cap costs a few seconds, not a parse of every package.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recipes.nano3.data_prep import hub

#: Documents shorter than this (corpus.min_chars overrides) are mostly boilerplate such as "Return x.".
MIN_CHARS = 40
#: Folders of the standard library that are not its own modules, or are test code.
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests"}


def source_roots() -> list[Path]:
    """The standard library first, then the environment's site-packages (once, however many names it has)."""
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("stdlib", "purelib", "platlib"):
        root = Path(paths[key]).resolve()
        if root.is_dir() and root not in roots:
            roots.append(root)
    return roots


def python_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if not _SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            yield path


def docstrings(path: Path) -> Iterator[str]:
    """Module, class and function docstrings of one file, in source order; unparsable files give none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=True)
            if text:
                yield text


def python_docstrings() -> Iterator[str]:
    for root in source_roots():
        for path in python_files(root):
            yield from docstrings(path)


def hub_texts(datasets: Iterable[Any], max_bytes: int | None) -> Iterator[str]:
    """Each hub dataset in turn, given its weight's share of the byte cap."""
    entries = list(datasets)
    total_weight = sum(float(e.get("weight", 1.0)) for e in entries) or 1.0
    for entry in entries:
        budget = None if max_bytes is None else max_bytes * float(entry.get("weight", 1.0)) / total_weight
        used = 0
        for row in hub.rows(entry["name"], entry.get("split", "train")):
            text = hub.field(row, entry.get("text_field", "text"))
            used += len(str(text).encode())
            if budget is not None and used > budget:
                break
            yield str(text)


#: Offline corpora by name: each is on every machine that can run the recipe.
OFFLINE = {"python_docstrings": python_docstrings}


def texts_of(name: str) -> Iterator[str]:
    return OFFLINE[name]()


def texts(corpus_cfg: Any, run_cfg: Any = None) -> Iterator[str]:
    """The documents the config's source names; `files` reads the orchestrator's snapshot (run.sources.corpus)."""
    source = corpus_cfg.source
    if source in OFFLINE:
        return texts_of(source)
    if source == "hf":
        return hub_texts(corpus_cfg.datasets, corpus_cfg.get("max_bytes"))
    if source == "files":
        from recipes.nano3.data_prep import sources

        taken = ((run_cfg or {}).get("sources") or {}).get("corpus")
        if taken is None:
            raise SystemExit("error: corpus.source is 'files' but run.sources.corpus is not set (the orchestrator snapshots the source)")
        snapshot = sources.SourceSnapshot.model_validate(_plain(taken))
        return _or_exit(sources.documents(snapshot, str(corpus_cfg.get("text_field", "text"))))
    raise SystemExit(f"error: corpus.source must be 'files', 'python_docstrings' or 'hf', got {source!r}")


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _or_exit(documents: Iterator[str]) -> Iterator[str]:
    """A source that fails halfway (a shard changed, a bad line) ends the job with one line naming it."""
    from recipes.nano3.data_prep.sources import SourceError

    try:
        yield from documents
    except SourceError as exc:
        raise SystemExit(f"error: {exc}") from None


@dataclass
class SplitStats:
    documents_train: int = 0
    documents_valid: int = 0
    bytes_train: int = 0
    bytes_valid: int = 0
    duplicates: int = 0
    too_short: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def is_valid(text: str, seed: int, valid_fraction: float) -> bool:
    """A seeded hash of the text, not its position, decides: the split survives reordering of the source."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < valid_fraction


def write_split(
    documents: Iterable[str],
    train_path: Path,
    valid_path: Path,
    *,
    max_bytes: int | None,
    min_chars: int,
    valid_fraction: float,
    seed: int,
    on_progress: Callable[[SplitStats], None] = lambda stats: None,
) -> SplitStats:
    """Write {"text": ...} lines until the next document would pass max_bytes (None: no cap)."""
    stats, seen = SplitStats(), set()
    with train_path.open("w", encoding="utf-8") as train, valid_path.open("w", encoding="utf-8") as valid:
        for text in documents:
            if len(text.strip()) < min_chars:
                stats.too_short += 1
                continue
            digest = hashlib.sha1(text.encode()).digest()
            if digest in seen:
                stats.duplicates += 1
                continue
            seen.add(digest)
            size = len(text.encode())
            if max_bytes is not None and stats.bytes_train + stats.bytes_valid + size > max_bytes:
                break
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            if is_valid(text, seed, valid_fraction):
                valid.write(line)
                stats.documents_valid += 1
                stats.bytes_valid += size
            else:
                train.write(line)
                stats.documents_train += 1
                stats.bytes_train += size
            if (stats.documents_train + stats.documents_valid) % 2000 == 0:
                on_progress(stats)
    return stats


def read_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)["text"]

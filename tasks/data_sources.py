"""The data sources a stage reads (Stage.sources): resolved, filled on first use, snapshotted for its key.

A config section such as `corpus:` with `source: files` names a folder or URL in `path`: a
relative path lies under the artifact store's root, so each store has its own data beside its
artifacts and a job reaches it with the store's credentials. `fill_from: python_docstrings` fills
an empty source on the first run with `fill_bytes` of the offline corpus, so the tiny config
needs nothing from the user and new shards dropped beside the filled ones are new data.

The snapshot (recipes.nano3.data_prep.sources) enters the stage's key as an input digest
`source:<section>` and reaches the job as `run.sources.<section>`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocks.errors import ConfigError
from recipes.nano3.data_prep import sources
from recipes.nano3.data_prep.sources import SourceError, SourceSnapshot
from recipes.nano3.runtime import is_url, scratch_root

if TYPE_CHECKING:
    from tasks.artifacts import ArtifactStore
    from tasks.job_config import JobConfig

#: A section's `source` that reads shards from a folder or URL.
FILES = "files"
#: What `fill_from` can name: offline corpora that need no network.
FILLERS = ("python_docstrings",)


@dataclass(frozen=True)
class DataSource:
    """One `source: files` section of a job's config."""

    section: str
    url: str
    config_file: Path
    fill_from: str | None
    fill_bytes: int

    def error(self, message: str, key: str = "path", hint: str | None = None) -> ConfigError:
        return ConfigError(message, file=str(self.config_file), key=f"{self.section}.{key}", hint=hint)


def resolve_url(path: str, store: ArtifactStore) -> str:
    """An absolute path or URL as written; a relative path under the store's root."""
    if "://" in path:
        return path
    if os.path.isabs(path) or path.startswith("~"):
        return os.path.expanduser(path)
    return store.url(*[part for part in path.split("/") if part not in ("", ".")])


def data_sources(job: JobConfig, store: ArtifactStore) -> list[DataSource]:
    found = []
    for section in job.stage.sources:
        cfg: Any = job.recipe_config.get(section) or {}
        if cfg.get("source") != FILES:
            continue
        where = dict(file=str(job.config_file))
        path = cfg.get("path")
        if not path:
            raise ConfigError("a `files` source needs a path (a folder or URL of shards)", **where, key=f"{section}.path")
        fill_from = cfg.get("fill_from")
        if fill_from is not None and fill_from not in FILLERS:
            raise ConfigError(
                f"unknown corpus '{fill_from}' to fill an empty source from", **where, key=f"{section}.fill_from",
                hint=f"one of: {', '.join(FILLERS)}",
            )
        fill_bytes = int(cfg.get("fill_bytes") or 0)
        if fill_from and fill_bytes <= 0:
            raise ConfigError("fill_from needs fill_bytes > 0", **where, key=f"{section}.fill_bytes")
        found.append(DataSource(section, resolve_url(str(path), store), job.config_file, fill_from, fill_bytes))
    return found


def _fs(source: DataSource, store: ArtifactStore) -> tuple[Any, str]:
    return store._fs_path(source.url)


def check(source: DataSource, store: ArtifactStore, *, hashed: bool = True) -> SourceSnapshot | None:
    """The snapshot as it stands, None for an empty source that the first run fills; ConfigError
    where the source cannot be used. Without `hashed`, only listed (the checks before a run: the
    stage's own snapshot reads the shards once, when it is keyed)."""
    fs, path = _fs(source, store)
    try:
        if source.fill_from and sources.is_empty(path, fs):
            return None
        if not hashed:
            sources.listing(path, fs)
            return None
        return sources.snapshot(path, fs).model_copy(update={"url": source.url})
    except SourceError as exc:
        raise source.error(str(exc), hint="drop shards there, or set fill_from to start from an offline corpus") from None
    except OSError as exc:
        raise source.error(f"the data source {source.url} cannot be read: {exc}") from None


def take(source: DataSource, store: ArtifactStore, say: Any = print) -> SourceSnapshot:
    """The snapshot the stage is keyed by, filling an empty source first where the config says so."""
    found = check(source, store)
    if found is not None:
        return found
    fs, path = _fs(source, store)
    made = offline_shards(source.fill_from, source.fill_bytes)
    shards = sources.put_shards(sorted(str(p) for p in made.iterdir() if sources.is_shard_name(p.name)), path, fs)
    say(f"data source {source.url} was empty: filled with {shards} shards from {source.fill_from}")
    snapshot = check(source, store)
    assert snapshot is not None
    return snapshot


def offline_shards(name: str, size: int) -> Path:
    """The offline corpus `name` as shards of `size` bytes in all, made once per machine and
    environment under the scratch folder: reading docstrings takes seconds, a copy milliseconds."""
    from recipes.nano3.data_prep import corpus

    environment = hashlib.sha256(f"{sys.prefix}:{sys.version}".encode()).hexdigest()[:10]
    folder = scratch_root() / "offline" / f"{name}-{size}-{environment}"
    if folder.is_dir():
        return folder
    partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    sources.fill(str(partial), corpus.texts_of(name), size)
    try:
        os.rename(partial, folder)
    except OSError:  # made by another process meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def describe(source: DataSource, store: ArtifactStore) -> str:
    """One line for the dry-run: what the stage would read, and its fingerprint. A plan never
    waits on the network: a remote source is looked at when the run starts."""
    if is_url(source.url):
        return f"{source.section}: {source.url}: remote; the run takes its fingerprint when it starts"
    try:
        found = check(source, store)
    except ConfigError as exc:
        return f"{source.section}: {source.url}: {exc.message} (a run stops here)"
    if found is None:
        return (f"{source.section}: {source.url}: empty; the first run fills it with {source.fill_bytes / 1e6:.1f} MB "
                f"from {source.fill_from}")
    return f"{source.section}: {source.url}: {found.describe()}"

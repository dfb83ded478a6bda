"""Raw documents from a source of shards: a folder or fsspec URL (local, `s3://`) of JSONL, Parquet
or text files, and the snapshot that pins which bytes a data prep reads.

The orchestrator takes the snapshot before it keys the stage (each shard's path, size and content
hash, or its ETag on S3) and hands it to the job in `run.sources.<section>`: the key changes with
any added or changed shard and with nothing else, and the job reads exactly the snapshot's files,
checking each against it, so a shard dropped in while the job runs waits for the next run.

Shards are read in path order. A `.jsonl` shard holds one JSON object per line (its text field is
`text_field`, dotted for nested ones), a `.parquet` shard one row per document (the column of that
name), a `.txt` shard is one document. Names starting with `.` or `_` are skipped: a writer can
upload under such a name and rename when done.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel

SHARD_SUFFIXES = (".jsonl", ".parquet", ".txt")
#: How much text one shard written by `fill` holds.
FILL_SHARD_BYTES = 1_000_000


class SourceError(Exception):
    """The source cannot be used: missing, unreadable, empty, or changed under the job."""


class SourceFile(BaseModel):
    #: Relative to the source's root, `/`-separated.
    path: str
    size: int
    #: `sha256:<hex>` of the bytes, or `etag:<value>` where the store keeps one (S3).
    checksum: str


class SourceSnapshot(BaseModel):
    url: str
    files: list[SourceFile]

    @property
    def digest(self) -> str:
        listing = [(f.path, f.size, f.checksum) for f in self.files]
        return "sha256:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def describe(self) -> str:
        return f"{len(self.files)} shards, {self.size / 1e6:.1f} MB, fingerprint {self.digest.removeprefix('sha256:')[:12]}"


def open_source(url: str, fs: Any = None) -> tuple[Any, str]:
    """(file system, root path) of the source; `fs` is the caller's own for that URL (with credentials)."""
    from recipes.nano3.runtime import is_url, remote_fs

    if fs is not None:
        return fs, url
    if is_url(url):
        return remote_fs(url)
    import fsspec

    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def is_shard_name(relative: str) -> bool:
    """A shard's suffix, and no part of its path a writer's unfinished (`_…`) or hidden (`.…`) name."""
    parts = PurePosixPath(relative).parts
    return relative.endswith(SHARD_SUFFIXES) and not any(p.startswith((".", "_")) for p in parts)


def _checksum(fs: Any, path: str, info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def listing(url: str, fs: Any = None) -> dict[str, dict[str, Any]]:
    """Every shard under the source (relative path → its file info), sorted by path, unread;
    SourceError if the source is missing, unreadable or holds none."""
    fs, root = open_source(url, fs)
    try:
        if not fs.isdir(root):
            raise SourceError(f"the data source {url} does not exist (or is not a folder)")
        found = fs.find(root, detail=True)
    except PermissionError as exc:
        raise SourceError(f"the data source {url} cannot be read: {exc}") from None
    base = root.rstrip("/") + "/"
    shards = {}
    for path, info in sorted(found.items()):
        relative = path[len(base):] if path.startswith(base) else PurePosixPath(path).name
        if info.get("type") == "file" and is_shard_name(relative):
            shards[relative] = {**info, "name": path}
    if not shards:
        raise SourceError(f"the data source {url} holds no shards ({', '.join('*' + s for s in SHARD_SUFFIXES)})")
    return shards


def snapshot(url: str, fs: Any = None) -> SourceSnapshot:
    """The listing with each shard's checksum: what a stage is keyed by."""
    shards = listing(url, fs)
    fs, _ = open_source(url, fs)
    files = []
    for relative, info in shards.items():
        try:
            files.append(SourceFile(path=relative, size=int(info["size"]), checksum=_checksum(fs, info["name"], info)))
        except PermissionError as exc:
            raise SourceError(f"the data source {url} cannot be read: shard {relative}: {exc}") from None
    return SourceSnapshot(url=url, files=files)


def is_empty(url: str, fs: Any = None) -> bool:
    """True where the source does not exist yet or holds no shard."""
    fs, root = open_source(url, fs)
    if not fs.isdir(root):
        return True
    return not any(is_shard_name(p[len(root.rstrip("/")) + 1:]) for p in fs.find(root))


def fill(url: str, texts: Iterable[str], total_bytes: int, fs: Any = None, shard_bytes: int = FILL_SHARD_BYTES) -> int:
    """Write documents into `part-NNNNN.jsonl` shards until `total_bytes` of text; returns the shard count.

    Each shard is written under a skipped name (`_part-…`) and renamed once complete, so a crash
    leaves nothing a snapshot would take for data."""
    fs, root = open_source(url, fs)
    fs.makedirs(root, exist_ok=True)
    shards, written, lines, pending = 0, 0, [], 0

    def flush() -> None:
        nonlocal shards, lines, pending
        name = f"part-{shards:05d}.jsonl"
        temporary, final = f"{root}/_{name}", f"{root}/{name}"
        fs.pipe_file(temporary, "".join(lines).encode())
        fs.mv(temporary, final)
        shards, lines, pending = shards + 1, [], 0

    for text in texts:
        size = len(text.encode())
        if written + size > total_bytes:
            break
        lines.append(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        written, pending = written + size, pending + size
        if pending >= shard_bytes:
            flush()
    if lines:
        flush()
    return shards


def put_shards(files: list[str], url: str, fs: Any = None) -> int:
    """Copy local shard files into the source, each under a skipped name (`_…`) until complete, so a
    snapshot never takes half a file; a name the source already holds is refused before any copy."""
    fs, root = open_source(url, fs)
    names = [os.path.basename(path) for path in files]
    taken = [name for name in names if fs.exists(f"{root}/{name}")]
    if taken or len(set(names)) < len(names):
        clash = taken[0] if taken else next(n for n in names if names.count(n) > 1)
        raise SourceError(f"{url} already holds a shard named {clash} (or two new ones share it); rename the new one")
    fs.makedirs(root, exist_ok=True)
    for path, name in zip(files, names):
        fs.put_file(path, f"{root}/_{name}")
        fs.mv(f"{root}/_{name}", f"{root}/{name}")
    return len(names)


def _field(record: Any, dotted: str, where: str) -> str:
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise SourceError(f"{where}: a record has no field '{dotted}' (name it in corpus.text_field)")
        value = value[key]
    return str(value)


def _texts(data: bytes, relative: str, text_field: str) -> Iterator[str]:
    if relative.endswith(".txt"):
        yield data.decode("utf-8")
    elif relative.endswith(".jsonl"):
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SourceError(f"shard {relative} line {number} is not JSON: {exc}") from None
                yield _field(record, text_field, f"shard {relative} line {number}")
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        column = text_field.split(".")[0]
        if column not in table.column_names:
            raise SourceError(f"shard {relative} has no column '{column}' (columns: {table.column_names})")
        for record in table.select([column]).to_pylist():
            yield _field(record, text_field, f"shard {relative}")


def documents(
    source: SourceSnapshot, text_field: str = "text", fs: Any = None, on_shard: Callable[[SourceFile], None] | None = None
) -> Iterator[str]:
    """The texts of the snapshot's shards, in order; SourceError where a shard is no longer what was snapshotted."""
    fs, root = open_source(source.url, fs)
    for entry in source.files:
        path = f"{root.rstrip('/')}/{entry.path}"
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise SourceError(f"shard {entry.path} of {source.url} was removed after the run began; run again") from None
        changed = len(data) != entry.size or (
            entry.checksum.startswith("sha256:") and "sha256:" + hashlib.sha256(data).hexdigest() != entry.checksum
        )
        if changed:
            raise SourceError(f"shard {entry.path} of {source.url} changed after the run began; run again")
        if on_shard is not None:
            on_shard(entry)
        yield from _texts(data, entry.path, text_field)

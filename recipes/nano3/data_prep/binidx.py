"""JSONL documents → megatron-core's indexed dataset (.bin/.idx), over worker processes or Ray tasks.

    python -m recipes.nano3.data_prep.binidx --tokenizer tokenizer.json --input docs.jsonl \\
        --output-prefix out/train_text_document [--engine ray --workers 8]

Each `{"text": ...}` line becomes one document: its token ids and the end-of-document token.
The files are byte for byte what megatron-core's `IndexedDatasetBuilder` writes for one
`add_document(ids, [len(ids)])` per document (tests/recipes/test_binidx.py compares them), and
megatron-core's `IndexedDataset` reads them. They are written here rather than through the
builder because importing `megatron.core` costs 9 CPU-seconds on a 2-core machine, about half of
tokenizing 60 MB (docs/performance.md, "P1 data prep").

`workers` is the number of cores to use. Within a process, that many threads each encode a batch
of about 256 KiB at a time with the tokenizer's single-threaded `encode_batch`, which lets go of the
GIL while it encodes: only the small Python part (JSON parsing, token arrays, about 5% of the
work) takes turns, and results are written in input order. That keeps every core on the
tokenizer with no process to start; one `encode_batch` on all cores per batch cannot, as the
cores wait while Python works between batches (docs/performance.md, "P1 data prep").

Beyond THREADS_PER_PROCESS cores, those Python parts would queue on the one GIL, so the input is
cut into shards (byte ranges starting at a line, in input order), encoded by several processes
into shard .bin/.idx pairs under `shard_dir` and then concatenated in order. Engines, same bytes
from all:

- `process`: up to THREADS_PER_PROCESS workers in this process; more, a pool of processes on
  this machine with up to THREADS_PER_PROCESS threads each. One core per worker by default.
- `ray`: `workers` Ray tasks of one thread at a time. With `RAY_ADDRESS` set (a NeMo-Run RayJob
  or RayCluster) the tasks go to that cluster, whose nodes must all see the input and
  `shard_dir`; otherwise a local Ray with `workers` CPUs is started for the run and shut down
  after it.

Whatever the engine, the BPE itself (`bpe`, `--bpe`): `auto` encodes with tiktoken loaded with
the tokenizer's own ranks (fast_bpe.py, about 3x less CPU than HF tokenizers) once it has given
HF tokenizers' ids on edge cases and a sample of the input, and with HF tokenizers otherwise;
`hf` always with HF tokenizers. One line says which and why. Worker processes and Ray tasks use
the engine the starting process chose.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recipes.nano3.data_prep import fast_bpe

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: megatron-core's .idx header, format version, and dtype codes (megatron.core.datasets.indexed_dataset).
INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}
#: Text per encode_batch call: one call over a whole corpus holds every Encoding (ids, offsets,
#: token strings) at once, gigabytes. Small batches also even out the threads' finish at the end
#: (256 KiB: 8.4 s for the 60 MB benchmark corpus, 1 MiB: 8.6 s, 4 MiB: 8.9 s; docs/performance.md).
BATCH_BYTES = 256 << 10
#: Encoding threads in one process. Each thread holds the GIL for about 5% of its time (JSON
#: parsing, token arrays); beyond this many they would start to queue for it, so more cores get
#: more processes.
THREADS_PER_PROCESS = 4
#: Shards per worker process or Ray task: a worker that finishes early takes the next shard, so a
#: stretch of the input slower to encode than the rest does not leave the other cores idle at the end.
SHARDS_PER_WORKER = 8
#: No shard smaller than this: each costs a file pair and a task.
MIN_SHARD_BYTES = 256 << 10
ENGINES = ("process", "ray")
#: Which BPE engine encodes: `auto` the fast one (fast_bpe.py) where it proves it gives HF
#: tokenizers' ids, else HF tokenizers; `hf` HF tokenizers always.
BPE_ENGINES = ("auto", "hf")
#: The input the fast engine is checked on before it is used: this much text from each of a few
#: places of the file (with fast_bpe.EDGE_CASES).
SAMPLE_BYTES, SAMPLE_PLACES = 64 << 10, 4

Progress = Callable[[int, int], None]  # (documents, tokens) so far


def token_dtype(vocab_size: int) -> np.dtype:
    """megatron-core's DType.optimal_dtype: uint16 under 65,500 ids, int32 above."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


@dataclass(frozen=True)
class Counts:
    documents: int
    tokens: int


class IndexedDatasetWriter:
    """Appends documents to `<prefix>.bin` as they come; `finish()` writes `<prefix>.idx`.

    One sequence per document, as IndexedDatasetBuilder.add_document(ids, [len(ids)]) makes them.
    Only the sequence lengths stay in memory (4 bytes a document) until the index is written.
    """

    def __init__(self, prefix: Path | str, dtype: np.dtype) -> None:
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        self._bin = open(self.prefix + ".bin", "wb")  # noqa: SIM115 - closed in finish()
        self._lengths: list[np.ndarray] = []
        self.documents = self.tokens = 0

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """`tokens`: the documents' ids one after the other; `lengths`: each document's count."""
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(np.asarray(lengths, dtype=np.int32))
        self.documents += len(lengths)
        self.tokens += int(tokens.size)

    def add_shard(self, prefix: Path | str) -> None:
        """Append a whole .bin/.idx pair written with the same dtype (IndexedDatasetBuilder.add_index)."""
        dtype, lengths = read_lengths(str(prefix) + ".idx")
        if dtype != self.dtype:
            raise ValueError(f"{prefix}.idx holds {dtype} tokens, this dataset {self.dtype}")
        with open(str(prefix) + ".bin", "rb") as shard:
            shutil.copyfileobj(shard, self._bin, 16 << 20)
        self._lengths.append(lengths)
        self.documents += len(lengths)
        self.tokens += int(lengths.sum(dtype=np.int64))

    def finish(self) -> Counts:
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= self.dtype.itemsize
        with open(self.prefix + ".idx", "wb") as idx:
            idx.write(INDEX_HEADER)
            idx.write(struct.pack("<Q", INDEX_VERSION))
            idx.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            idx.write(struct.pack("<Q", len(lengths)))  # sequences
            idx.write(struct.pack("<Q", len(lengths) + 1))  # document boundaries, 0 first
            idx.write(lengths.tobytes())
            idx.write(pointers.tobytes())
            idx.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())
        return Counts(self.documents, self.tokens)


def read_lengths(idx_path: str) -> tuple[np.dtype, np.ndarray]:
    """(token dtype, sequence lengths) of an .idx written as above: one sequence per document."""
    with open(idx_path, "rb") as idx:
        head = idx.read(len(INDEX_HEADER) + 8 + 1 + 8 + 8)
        if head[: len(INDEX_HEADER)] != INDEX_HEADER:
            raise ValueError(f"{idx_path}: not a megatron .idx file")
        offset = len(INDEX_HEADER) + 8
        code = head[offset]
        sequences, documents = struct.unpack("<QQ", head[offset + 1 :])
        if documents != sequences + 1:
            raise ValueError(f"{idx_path}: {sequences} sequences in {documents - 1} documents; one each expected")
        lengths = np.fromfile(idx, dtype=np.int32, count=sequences)
    dtype = {code: dtype for dtype, code in DTYPE_CODES.items()}[code]
    return dtype, lengths


# --- reading ----------------------------------------------------------------------------------


def _loads() -> Callable[[bytes], dict]:
    """orjson where installed (twice json's speed on these lines), else json: the same strings."""
    try:
        import orjson
    except ImportError:
        return json.loads

    def loads(line: bytes) -> dict:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:  # e.g. an escaped lone surrogate, which json accepts
            return json.loads(line)

    return loads


def text_batches(path: Path, start: int = 0, end: int | None = None, batch_bytes: int = BATCH_BYTES) -> Iterator[list[str]]:
    """The `text` of the lines that start in [start, end), in batches of about batch_bytes."""
    loads = _loads()
    with open(path, "rb") as handle:
        handle.seek(start)
        position, batch, size = start, [], 0
        for line in handle:
            if end is not None and position >= end:
                break
            position += len(line)
            if not line.strip():
                continue
            batch.append(loads(line)["text"])
            size += len(line)
            if size >= batch_bytes:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch


def line_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """`parts` byte ranges of about equal size, each starting at a line: shards in input order."""
    size = path.stat().st_size
    return _cut_at_lines(path, [size * i // parts for i in range(1, parts)])


def line_ranges_every(path: Path, shard_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of about `shard_bytes`, each starting at a line. The cuts depend on the bytes
    before them only: text appended to the file leaves every earlier shard as it was."""
    size = path.stat().st_size
    return _cut_at_lines(path, list(range(shard_bytes, size, shard_bytes)))


def _cut_at_lines(path: Path, offsets: list[int]) -> list[tuple[int, int]]:
    """Each offset moved to the start of the line after the byte before it; empty ranges dropped."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(max(offset - 1, cuts[-1]))
            handle.readline()  # to the start of the next line
            cuts.append(max(min(handle.tell(), size), cuts[-1]))
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a or len(cuts) == 2]


# --- one shard ---------------------------------------------------------------------------------


Encoded = tuple[np.ndarray, np.ndarray]  # (the documents' ids one after the other, eos included; their lengths)


@contextlib.contextmanager
def serial_tokenizer() -> Iterator[None]:
    """Each `encode_batch` on its calling thread only: the parallelism is ours (threads, processes).

    The tokenizers library reads TOKENIZERS_PARALLELISM at every call; with it on, every batch
    would also fan out over all cores and compete with the other threads (1.1x slower here).
    """
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def encode_texts(tok: Tokenizer, texts: list[str], eos_id: int, dtype: np.dtype) -> Encoded:
    ids: list[int] = []
    lengths: list[int] = []
    for encoding in tok.encode_batch(texts, add_special_tokens=False):
        document = encoding.ids
        ids += document
        ids.append(eos_id)
        lengths.append(len(document) + 1)
    return np.array(ids, dtype=dtype), np.array(lengths, dtype=np.int32)


def in_order(encode_one: Callable[[list[str]], Encoded], batches: Iterable[list[str]], threads: int) -> Iterator[Encoded]:
    """`encode_one` over the batches on `threads` threads, results in input order; at most two
    batches per thread read ahead, so memory stays a few MiB whatever the input's size."""
    if threads == 1:
        yield from map(encode_one, batches)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="binidx-encode") as pool:
        pending: collections.deque = collections.deque()
        for texts in batches:
            pending.append(pool.submit(encode_one, texts))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def encode_range(
    tok: Tokenizer,
    path: Path,
    prefix: Path | str,
    *,
    eos: str,
    start: int = 0,
    end: int | None = None,
    threads: int = 1,
    batch_bytes: int = BATCH_BYTES,
    on_progress: Progress = lambda documents, tokens: None,
    fast: fast_bpe.FastBPE | None = None,
) -> Counts:
    """Encode the lines of `path` that start in [start, end) into `<prefix>.bin/.idx` on `threads`
    threads, with `fast` where given (one `select` has proven it gives `tok`'s ids), else `tok`."""
    eos_id = tok.token_to_id(eos)
    if eos_id is None:
        raise SystemExit(f"error: the tokenizer has no token {eos!r} to end documents with")
    writer = IndexedDatasetWriter(prefix, token_dtype(tok.get_vocab_size()))

    def encode_one(texts: list[str]) -> Encoded:
        if fast is not None:
            try:
                return fast.encode_documents(texts, eos_id, writer.dtype)
            except UnicodeEncodeError:  # a lone surrogate: HF's way with it (an error), not another
                pass
        return encode_texts(tok, texts, eos_id, writer.dtype)

    with serial_tokenizer():
        for tokens, lengths in in_order(encode_one, text_batches(path, start, end, batch_bytes), threads):
            writer.add_documents(tokens, lengths)
            on_progress(writer.documents, writer.tokens)
    return writer.finish()


@dataclass(frozen=True)
class Shard:
    path: str
    start: int
    end: int
    prefix: str
    eos: str
    batch_bytes: int
    threads: int = 1
    fast: bool = False  # the fast BPE engine, proven in the process that planned the shards


@functools.cache
def encoder_digest() -> str:
    """Part of every shard's key: the code that writes a shard (this module, the fast BPE engine)
    and the tokenizer libraries' versions. Shard files kept from before an upgrade or an edit of
    that code are not reused (the pipeline's stage gets a new work folder then anyway; the
    `data encode` command's shard folder does not)."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256(Path(__file__).read_bytes() + Path(fast_bpe.__file__).read_bytes())
    for package in ("tokenizers", "tiktoken"):
        with contextlib.suppress(PackageNotFoundError):
            digest.update(f"{package}=={version(package)}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class EncodedShard:
    """A shard's finished .bin/.idx pair: `<prefix>.bin`, `<prefix>.idx`."""

    prefix: str
    counts: Counts
    #: Finished by an earlier run (same bytes, tokenizer and end-of-document token): not encoded again.
    reused: bool


#: The tokenizer of this worker process (and its fast engine), built once for all the shards it encodes.
_worker_tokenizer: dict[tuple[str, bool], tuple[Tokenizer, fast_bpe.FastBPE | None]] = {}


def _use_tokenizer(tokenizer_json: str, fast: bool = False) -> tuple[Tokenizer, fast_bpe.FastBPE | None]:
    if (tokenizer_json, fast) not in _worker_tokenizer:
        from tokenizers import Tokenizer

        _worker_tokenizer.clear()
        engine = fast_bpe.FastBPE.from_json(tokenizer_json) if fast else None
        _worker_tokenizer[tokenizer_json, fast] = Tokenizer.from_str(tokenizer_json), engine
    return _worker_tokenizer[tokenizer_json, fast]


def shard_key(shard: Shard, tokenizer_json: str) -> str:
    """What a shard's files depend on: its bytes, the tokenizer, the end-of-document token and the
    encoding code; not where the shard lies in the file, nor the BPE engine (the fast one gives
    HF tokenizers' ids or is not used)."""
    digest = hashlib.sha256()
    for part in (encoder_digest(), hashlib.sha256(tokenizer_json.encode()).hexdigest(), shard.eos):
        digest.update(part.encode() + b"\0")
    with open(shard.path, "rb") as handle:
        handle.seek(shard.start)
        left = shard.end - shard.start
        while left > 0 and (chunk := handle.read(min(left, 16 << 20))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def finished_shard(prefix: str) -> Counts | None:
    """The counts of a shard pair under `prefix`, None unless both files are there (.idx is renamed last)."""
    if not (os.path.isfile(prefix + ".idx") and os.path.isfile(prefix + ".bin")):
        return None
    _, lengths = read_lengths(prefix + ".idx")
    return Counts(len(lengths), int(lengths.sum(dtype=np.int64)))


def encode_shard(shard: Shard, tokenizer_json: str | None = None, key: str | None = None) -> EncodedShard:
    """Encode one shard into `<shard.prefix>.<key>.bin/.idx`, or reuse that pair if an earlier run
    finished it: a job killed halfway encodes again only the shards it had not finished.

    Written under a `.partial` name and renamed, the .idx last, so a pair is whole or absent.
    Without `tokenizer_json`, the tokenizer this worker process was started with; `key`: the
    shard's `shard_key` where the caller has it already (it reads the shard's bytes once more).
    """
    if tokenizer_json is None:
        (tokenizer_json, _), = _worker_tokenizer
    tok, fast = _use_tokenizer(tokenizer_json, shard.fast)
    prefix = f"{shard.prefix}.{(key or shard_key(shard, tokenizer_json))[:32]}"
    if (counts := finished_shard(prefix)) is not None:
        return EncodedShard(prefix, counts, reused=True)
    partial = prefix + ".partial"
    counts = encode_range(tok, Path(shard.path), partial, eos=shard.eos, start=shard.start, end=shard.end,
                          threads=shard.threads, batch_bytes=shard.batch_bytes, fast=fast)
    os.replace(partial + ".bin", prefix + ".bin")
    os.replace(partial + ".idx", prefix + ".idx")
    return EncodedShard(prefix, counts, reused=False)


def shard_count(path: Path, workers: int) -> int:
    """SHARDS_PER_WORKER shards per worker, none under MIN_SHARD_BYTES."""
    return max(1, min(workers * SHARDS_PER_WORKER, math.ceil(path.stat().st_size / MIN_SHARD_BYTES)))


def plan_shards(path: Path, prefix: Path | str, workers: int, shard_dir: Path, eos: str, batch_bytes: int,
                threads: int = 1, fast: bool = False, ranges: list[tuple[int, int]] | None = None) -> list[Shard]:
    """The shards of `path` in input order: `ranges`, else `shard_count(path, workers)` of about equal size."""
    name = Path(prefix).name
    ranges = ranges if ranges is not None else line_ranges(path, shard_count(path, workers))
    return [Shard(str(path), a, b, str(shard_dir / f"{name}.{i:05d}"), eos, batch_bytes, threads, fast)
            for i, (a, b) in enumerate(ranges)]


def join_shards(encoded: list[EncodedShard], prefix: Path | str, dtype: np.dtype, shard_dir: Path | None = None) -> Counts:
    """Concatenate the shards' pairs in the order given; then remove `shard_dir` where one is given."""
    writer = IndexedDatasetWriter(prefix, dtype)
    for shard in encoded:
        writer.add_shard(shard.prefix)
    counts = writer.finish()
    if shard_dir is not None:
        shutil.rmtree(shard_dir, ignore_errors=True)
    return counts


# --- the engines --------------------------------------------------------------------------------


def encode_with_processes(
    tok: Tokenizer,
    path: Path,
    prefix: Path | str,
    *,
    eos: str,
    workers: int,
    shard_dir: Path,
    batch_bytes: int = BATCH_BYTES,
    on_progress: Progress = lambda documents, tokens: None,
    fast: fast_bpe.FastBPE | None = None,
) -> Counts:
    """`workers` threads in this process; beyond THREADS_PER_PROCESS, shards over a pool of processes."""
    processes = math.ceil(workers / THREADS_PER_PROCESS)
    threads = math.ceil(workers / processes)
    shards = plan_shards(path, prefix, processes, shard_dir, eos, batch_bytes, threads, fast is not None) if processes > 1 else []
    if len(shards) <= 1:
        return encode_range(tok, path, prefix, eos=eos, threads=threads, batch_bytes=batch_bytes, on_progress=on_progress,
                            fast=fast)
    shard_dir.mkdir(parents=True, exist_ok=True)
    documents = tokens = 0
    # spawn, not fork: this process may hold the tokenizer's threads (it may have just trained it).
    context = multiprocessing.get_context("spawn")
    encoded = []
    with context.Pool(min(processes, len(shards)), initializer=_use_tokenizer,
                      initargs=(tok.to_str(), fast is not None)) as pool:
        for shard in pool.imap(encode_shard, shards):
            encoded.append(shard)
            documents, tokens = documents + shard.counts.documents, tokens + shard.counts.tokens
            on_progress(documents, tokens)
    return join_shards(encoded, prefix, token_dtype(tok.get_vocab_size()), shard_dir)


@contextlib.contextmanager
def ray_cluster(workers: int) -> Iterator[None]:
    """Ray for the block: the cluster at RAY_ADDRESS, or a local one of `workers` CPUs started for it.

    A local Ray is this run's alone (no dashboard) and is shut down with every process it
    started when the block ends; a Ray this process had already joined is left as it is.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a run's own Ray reports nowhere
        ray.init(num_cpus=workers, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def encode_with_ray(
    tok: Tokenizer,
    path: Path,
    prefix: Path | str,
    *,
    eos: str,
    workers: int,
    shard_dir: Path,
    batch_bytes: int = BATCH_BYTES,
    on_progress: Progress = lambda documents, tokens: None,
    fast: fast_bpe.FastBPE | None = None,
) -> Counts:
    """Shards as Ray tasks of one CPU each, `workers` CPUs' worth of them at a time on a local Ray."""
    import ray

    shards = plan_shards(path, prefix, workers, shard_dir, eos, batch_bytes, fast=fast is not None)
    shard_dir.mkdir(parents=True, exist_ok=True)
    documents = tokens = 0
    with ray_cluster(workers):
        remote = ray.remote(num_cpus=1, max_retries=2)(encode_shard)
        tokenizer_json = ray.put(tok.to_str())
        order = [remote.remote(shard, tokenizer_json) for shard in shards]
        done, pending = {}, list(order)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            shard = done[ready[0]] = ray.get(ready[0])
            documents, tokens = documents + shard.counts.documents, tokens + shard.counts.tokens
            on_progress(documents, tokens)
    return join_shards([done[ref] for ref in order], prefix, token_dtype(tok.get_vocab_size()), shard_dir)


def encode(
    tok: Tokenizer,
    path: Path,
    prefix: Path | str,
    *,
    eos: str,
    engine: str = "process",
    workers: int = 1,
    shard_dir: Path | None = None,
    batch_bytes: int = BATCH_BYTES,
    on_progress: Progress = lambda documents, tokens: None,
    bpe: str = "auto",
) -> Counts:
    """The engine's way to the same bytes; shard_dir defaults to `<prefix>.shards/`."""
    if engine not in ENGINES:
        raise SystemExit(f"error: encode.engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if workers < 1:
        raise SystemExit(f"error: encode.workers must be 1 or more, got {workers}")
    fast = select_bpe(tok, path, bpe)
    run = encode_with_processes if engine == "process" else encode_with_ray
    return run(tok, path, prefix, eos=eos, workers=workers, shard_dir=shard_dir or Path(f"{prefix}.shards"),
               batch_bytes=batch_bytes, on_progress=on_progress, fast=fast)


def sample_texts(path: Path) -> list[str]:
    """About SAMPLE_BYTES of documents from each of SAMPLE_PLACES places of the input."""
    sample: list[str] = []
    for start, end in line_ranges(path, SAMPLE_PLACES):
        sample += next(text_batches(path, start, end, SAMPLE_BYTES), [])
    return sample


def select_bpe(tok: Tokenizer, path: Path, bpe: str = "auto") -> fast_bpe.FastBPE | None:
    """The fast engine where `bpe` allows it and it gives `tok`'s ids on the edge cases and a sample
    of `path`, else None (HF tokenizers); one line says which and why."""
    if bpe not in BPE_ENGINES:
        raise SystemExit(f"error: encode.bpe must be one of {', '.join(BPE_ENGINES)}, got {bpe!r}")
    if bpe == "hf":
        fast, line = None, "tokenizer engine: HF tokenizers (asked for: bpe=hf)"
    else:
        with serial_tokenizer():
            fast, line = fast_bpe.select(tok, sample_texts(path))
    print(line, flush=True)
    return fast


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, type=Path, help="a tokenizers JSON file")
    parser.add_argument("--input", required=True, type=Path, help='JSON Lines of {"text": ...}')
    parser.add_argument("--output-prefix", required=True, help="writes <prefix>.bin and <prefix>.idx")
    parser.add_argument("--eos", default="<eos>", help="the token appended to every document")
    parser.add_argument("--engine", choices=ENGINES, default="process")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cores: threads and processes, or Ray CPUs")
    parser.add_argument("--batch-bytes", type=int, default=BATCH_BYTES)
    parser.add_argument("--bpe", choices=BPE_ENGINES, default="auto", help="auto: the fast BPE engine where proven equivalent")
    args = parser.parse_args(argv)
    from tokenizers import Tokenizer

    started = time.monotonic()
    counts = encode(Tokenizer.from_file(str(args.tokenizer)), args.input, args.output_prefix, eos=args.eos,
                    engine=args.engine, workers=args.workers, batch_bytes=args.batch_bytes, bpe=args.bpe)
    seconds = time.monotonic() - started
    print(json.dumps({"documents": counts.documents, "tokens": counts.tokens, "seconds": round(seconds, 3)}))


if __name__ == "__main__":
    # Through the module's own name, so that worker processes and Ray tasks find what they unpickle.
    from recipes.nano3.data_prep import binidx

    sys.exit(binidx.main())

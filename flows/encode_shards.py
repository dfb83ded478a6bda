"""A large JSONL corpus → megatron .bin/.idx, one Prefect task per shard on Ray (`nemotron data encode`).

The corpus is cut into shards of about `shard_mb` at line starts (cuts that text appended to the
file leaves in place). Each shard is a Prefect task (tasks/shard_encoding.py) mapped over
prefect-ray's RayTaskRunner: a Ray started for the run on this machine, or the Ray cluster at
`ray_address`, whose workers must see the input, the tokenizer and the shard folder. The shards'
files are joined in input order: the same bytes as the whole file encoded in one process.

The shard files stay in the shard folder (default `<output prefix>.shards/`), named by the
shard's bytes, the tokenizer and the end token: a run killed part way, or a rerun after text was
appended, encodes only the shards that have none; Prefect shows the others as Cached.

The pipeline's data prep stage encodes inside its own job (a recipe never imports Prefect) with
the same per-shard function and files; this flow is for corpora encoded apart from a run, with
each shard visible in the Prefect UI.
"""

from __future__ import annotations

import contextvars
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

from blocks.errors import ConfigError
from recipes.nano3.data_prep import binidx
from tasks.shard_encoding import encode_shard, records_folder
from tasks.job_config import COMMAND_LINE
from tasks.stages import PROJECT_ROOT

#: Text per shard unless told: one task of a few seconds to a minute on one core, and a few
#: thousand tasks for a terabyte.
SHARD_MB = 64
#: What a Ray worker imports to run a shard task, sent to a Ray cluster given by address.
WORKER_PACKAGES = ("tasks", "recipes")

#: Called with (shards done, shards in all) as each finishes: the command line's progress bar.
_on_shard: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar("on_shard", default=None)


@dataclass(frozen=True)
class EncodeSummary:
    prefix: str
    documents: int
    tokens: int
    shards: int
    #: Shards encoded by this run; the others were finished by an earlier one.
    encoded: int
    seconds: float

    def describe(self) -> str:
        earlier = self.shards - self.encoded
        return (f"wrote {self.prefix}.bin/.idx: {self.documents:,} documents, {self.tokens:,} tokens; "
                f"{self.shards} shards, {self.encoded} encoded now, {earlier} finished by an earlier run; "
                f"{self.seconds:.1f} s")


def shard_reporter() -> Callable[[int, int], None] | None:
    """The flow reaches the hook through this function: Ray's workers get the flow by value (its
    function is not a module attribute, the Flow is), with the globals it names, and a ContextVar
    does not pickle; a module function does, by name."""
    return _on_shard.get()


@contextmanager
def reporting_shards(callback: Callable[[int, int], None]) -> Iterator[None]:
    token = _on_shard.set(callback)
    try:
        yield
    finally:
        _on_shard.reset(token)


def check_reachable(ray_address: str, timeout: float = 10.0) -> None:
    """One clear error for a Ray address nothing answers at; Ray itself would retry for minutes."""
    host, _, port = ray_address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"expected host:port or ray://host:port, got {ray_address!r}", file=COMMAND_LINE,
                          key="--ray-address")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"nothing answers at {ray_address}: {exc.strerror or exc}", file=COMMAND_LINE,
                          key="--ray-address", hint="is the Ray cluster up? `ray status --address ...`") from None


def ray_runner(ray_address: str | None, workers: int | None, api_url: str):
    """prefect-ray's task runner. Its workers report to this command's Prefect API (else each would
    start a server of its own) and import the shard task from this checkout: on this machine by
    PYTHONPATH, on a cluster given by address as packages Ray uploads."""
    from prefect_ray import RayTaskRunner

    env = {"PREFECT_API_URL": api_url, "RAY_USAGE_STATS_ENABLED": "0"}
    if ray_address:
        packages = [str(PROJECT_ROOT / name) for name in WORKER_PACKAGES]
        return RayTaskRunner(address=ray_address, init_kwargs={
            "log_to_driver": False, "runtime_env": {"env_vars": env, "py_modules": packages}})
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a run's own Ray reports nowhere
    return RayTaskRunner(init_kwargs={
        "num_cpus": workers or os.cpu_count() or 1, "include_dashboard": False, "log_to_driver": False,
        "runtime_env": {"env_vars": {**env, "PYTHONPATH": str(PROJECT_ROOT)}}})


@flow(name="nano3-encode-shards")
def encode_corpus(input: str, tokenizer: str, output_prefix: str, shard_dir: str, shard_bytes: int,
                  eos: str = "<eos>", bpe: str = "auto") -> EncodeSummary:
    """Shards → Prefect tasks on the flow's task runner (ray_runner) → joined in input order."""
    from tokenizers import Tokenizer

    started = time.monotonic()
    logger = get_run_logger()
    path, folder = Path(input), Path(shard_dir)
    tok = Tokenizer.from_file(tokenizer)
    fast = binidx.select_bpe(tok, path, bpe)  # proven once here; every shard task uses the choice
    folder.mkdir(parents=True, exist_ok=True)
    shards = binidx.plan_shards(path, output_prefix, 1, folder, eos, binidx.BATCH_BYTES, fast=fast is not None,
                                ranges=binidx.line_ranges_every(path, shard_bytes))
    total = len(shards)
    logger.info("%s: %d shards of about %.1f MB", path, total, shard_bytes / 1e6)
    futures = encode_shard.map(shards, unmapped(tokenizer), range(1, total + 1), unmapped(total))
    progress = create_progress_artifact(0.0, description=f"shards of {path.name} encoded")
    report = shard_reporter()
    for done, _ in enumerate(as_completed(futures), start=1):
        update_progress_artifact(progress, 100.0 * done / total)
        if report is not None:
            report(done, total)
    results = [future.result() for future in futures]
    # A Prefect record outlives its files if they were removed by hand: encode those shards again.
    gone = [i for i, shard in enumerate(results) if binidx.finished_shard(shard.prefix) is None]
    for i in gone:
        results[i] = encode_shard.with_options(refresh_cache=True).submit(shards[i], tokenizer, i + 1, total).result()
    encoded = sum(1 for i, (future, shard) in enumerate(zip(futures, results))
                  if i in gone or (future.state.name != "Cached" and not shard.reused))
    counts = binidx.join_shards(results, output_prefix, binidx.token_dtype(tok.get_vocab_size()))
    summary = EncodeSummary(str(output_prefix), counts.documents, counts.tokens, total, encoded,
                            round(time.monotonic() - started, 3))
    logger.info(summary.describe())
    return summary


def run_encode(input: Path, tokenizer: Path, output_prefix: str, *, shard_mb: float = SHARD_MB,
               shard_dir: Path | None = None, ray_address: str | None = None, workers: int | None = None,
               eos: str = "<eos>", bpe: str = "auto") -> EncodeSummary:
    """The flow on a Ray task runner whose workers report to this command's Prefect API."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from blocks.prefect_server import api_for_workers

    # Absolute: Ray's workers run in folders of their own.
    prefix = os.path.abspath(output_prefix)
    folder = Path(shard_dir or f"{prefix}.shards").absolute()
    if ray_address:
        check_reachable(ray_address)
    # The flow's result store goes to its tasks on Ray: the records beside the shard files.
    with api_for_workers() as api_url, temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: records_folder(folder)}):
        runner = ray_runner(ray_address, workers, api_url)
        return encode_corpus.with_options(task_runner=runner)(
            str(input.absolute()), str(tokenizer.absolute()), prefix, str(folder), int(shard_mb * 1e6), eos, bpe)

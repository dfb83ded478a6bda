"""One shard of a corpus encoded to megatron .bin/.idx as a Prefect task (flows/encode_shards.py maps
it over Ray).

The work is the recipe's own (`binidx.encode_shard`: the same bytes as encoding the whole file in
one process); what this adds is Prefect's view of it: a task run per shard in the UI, Cached when
an earlier run finished a shard with the same bytes, tokenizer and end token. The key is computed
on the worker that runs the shard (it reads the shard's bytes), and the result records live in
the shard folder beside the files they name, so both are kept or removed together.

Imports only Prefect and the recipe: a Ray worker imports this module to run the task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.transactions import get_transaction

from recipes.nano3.data_prep import binidx


def _tokenizer_json(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


#: Before the shard's key in Prefect's cache key.
KEY_PREFIX = "nano3-shard-"


class ShardCachePolicy(CachePolicy):
    """The shard's key (binidx.shard_key): its bytes, the tokenizer's JSON, the end-of-document
    token, the encoding code."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        return KEY_PREFIX + binidx.shard_key(inputs["shard"], _tokenizer_json(inputs["tokenizer"]))


def records_folder(shard_dir: Path) -> Path:
    """Where Prefect keeps the shard tasks' results: inside the shard folder."""
    return shard_dir / "prefect-records"


@task(name="encode-shard", task_run_name="shard {index} of {total}", cache_policy=ShardCachePolicy(),
      persist_result=True, retries=1)
def encode_shard(shard: binidx.Shard, tokenizer: str, index: int, total: int) -> binidx.EncodedShard:
    """`tokenizer`: the path of its JSON file, which the Ray workers read (they see the input too).
    The key the cache policy computed (the run's transaction key) names the files: the shard's
    bytes are read and hashed once, not again here."""
    transaction = get_transaction()
    key = transaction.key.removeprefix(KEY_PREFIX) if transaction is not None and transaction.key else None
    return binidx.encode_shard(shard, _tokenizer_json(tokenizer), key=key)

"""The cache key of a stage: what it computes, not where it runs.

sha256 over the stage id, the digest of the recipe's source, the resolved recipe config without
its where-to-run and bookkeeping fields, and the digests of the input artifacts. Same key = same
outputs: the stage is skipped, on any executor.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tasks.stages import PROJECT_ROOT, RECIPES_ROOT, Stage

#: run.* fields that say where or how to run, or are derived from the key itself.
NOT_IN_KEY = ("env", "wandb", "output_dir", "work_dir", "stage", "inputs")
#: Recipe sources that every stage shares (a change there changes every key).
SHARED_SOURCES = ("runtime.py", "manifest.py", "hf_model.py", "megatron_support.py", "ray_cluster.py")


def recipe_digest(stage: Stage) -> str:
    """Digest of the code that runs: the stage folder (but not its configs) and the shared modules."""
    digest = hashlib.sha256()
    files = [p for p in sorted(stage.recipe_dir.rglob("*")) if p.is_file() and "config" not in p.relative_to(stage.recipe_dir).parts]
    files += [RECIPES_ROOT / name for name in SHARED_SOURCES if (RECIPES_ROOT / name).is_file()]
    for path in files:
        if path.suffix in (".pyc",) or "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(PROJECT_ROOT).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def compute_cache_key(stage: Stage, recipe_config: dict[str, Any], input_digests: dict[str, str]) -> str:
    config = dict(recipe_config)
    config["run"] = {k: v for k, v in (config.get("run") or {}).items() if k not in NOT_IN_KEY}
    payload = {
        "stage": stage.id,
        "recipe": recipe_digest(stage),
        "config": config,
        "inputs": dict(sorted(input_digests.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]

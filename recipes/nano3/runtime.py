"""What every nano3 recipe shares: reading the resolved config, progress lines, checkpoints, manifest.

Recipes run in another process, container or node, so this module depends on nothing of the
orchestrator: only the command line (`--config resolved.yaml`), the files under `run.work_dir`
and `run.output_dir`, and `output_dir/manifest.json`, written last and atomically.

The resolved config's `run` block, as the task writes it:

    run:
      stage: pretrain
      output_dir: /store/pretrain/<cache_key>      # final files; manifest.json marks it done
      work_dir: /store/_work/pretrain/<cache_key>  # checkpoints and scratch, kept across restarts
      seed: 1234
      inputs:
        data: {name: nano3-pretrain-data, version: v1, digest: sha256:..., type: binidx, path: /store/...}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipes.nano3.manifest import MANIFEST_NAME, FileEntry, InputRef, Manifest

PROGRESS_PREFIX = "NANO3_PROGRESS "
CHECKPOINT_DONE = "COMPLETE"
#: Set by the orchestrator for jobs on this machine: the job ends when that process is gone.
ORCHESTRATOR_PID_VAR = "NANO3_ORCHESTRATOR_PID"


@dataclass(frozen=True)
class RecipeContext:
    config: DictConfig
    config_path: Path
    stage: str
    output_dir: Path
    work_dir: Path
    inputs: dict[str, InputRef]
    seed: int

    def input_path(self, name: str) -> Path:
        if name not in self.inputs:
            raise SystemExit(f"error: config has no input '{name}' (run.inputs.{name}); inputs: {sorted(self.inputs)}")
        return Path(self.inputs[name].path)


def start(argv: list[str] | None = None) -> RecipeContext:
    """Parse `--config`, make the folders, seed every RNG, and return what the recipe needs."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    parser.add_argument("--config", required=True, type=Path, help="The resolved config (YAML).")
    args = parser.parse_args(argv)
    cfg = OmegaConf.load(args.config)
    assert isinstance(cfg, DictConfig)
    run = cfg.get("run") or {}
    missing = [k for k in ("output_dir", "work_dir") if k not in run]
    if missing:
        raise SystemExit(f"error: {args.config}: run.{missing[0]} is not set (the orchestrator resolves it)")
    inputs = {
        name: InputRef.model_validate(OmegaConf.to_container(ref, resolve=True))
        for name, ref in (run.get("inputs") or {}).items()
    }
    seed = int(run.get("seed", cfg.get("seed", 1234)))
    seed_everything(seed)
    watch_orchestrator()
    output_dir, work_dir = Path(run.output_dir), Path(run.work_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    return RecipeContext(
        config=cfg,
        config_path=args.config,
        stage=str(run.get("stage", "")),
        output_dir=output_dir,
        work_dir=work_dir,
        inputs=inputs,
        seed=seed,
    )


def watch_orchestrator(interval: float = 1.0) -> None:
    """A local job must not outlive the orchestrator that started it.

    If the orchestrator is killed, its rerun submits the stage again and resumes from the last
    checkpoint; an orphan still writing to the same work folder would race that new job.
    """
    pid = os.environ.get(ORCHESTRATOR_PID_VAR)
    if not pid:
        return

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                print(f"orchestrator {pid} is gone; stopping (the rerun resumes from the last checkpoint)", flush=True)
                os._exit(143)
            except PermissionError:
                continue

    threading.Thread(target=watch, name="nano3-orchestrator-watch", daemon=True).start()


def seed_everything(seed: int) -> None:
    """Seed every RNG a recipe may use, torch included even if not imported yet (≈ 3 s): model
    initialisation must not depend on import order."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def progress(step: int, total: int, **metrics: float | int | str) -> None:
    """One machine-readable line per update; the orchestrator turns them into progress bars."""
    line = {"step": step, "total": total, "time": round(time.time(), 3), **metrics}
    print(PROGRESS_PREFIX + json.dumps(line), flush=True)


# --- checkpoints -----------------------------------------------------------------------------


def checkpoint_dir(work_dir: Path, step: int) -> Path:
    return work_dir / "checkpoints" / f"step_{step:08d}"


def mark_checkpoint_complete(path: Path) -> None:
    """Write the marker last: a checkpoint cut short by a crash has none and is never resumed from."""
    (path / CHECKPOINT_DONE).write_text(str(int(time.time())))


def latest_checkpoint(work_dir: Path) -> tuple[int, Path] | None:
    root = work_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(
        (int(p.name.removeprefix("step_")), p)
        for p in root.glob("step_*")
        if (p / CHECKPOINT_DONE).is_file() and p.name.removeprefix("step_").isdigit()
    )
    return done[-1] if done else None


def prune_checkpoints(work_dir: Path, keep: int = 2) -> None:
    root = work_dir / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / CHECKPOINT_DONE).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --- the manifest ------------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def finish(
    ctx: RecipeContext,
    artifact_type: str,
    *,
    metrics: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Manifest:
    """Digest every file under output_dir and write manifest.json atomically: the stage is done."""
    files = [
        FileEntry(path=p.relative_to(ctx.output_dir).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
        for p in sorted(ctx.output_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(f".{MANIFEST_NAME}")
    ]
    manifest = Manifest(
        type=artifact_type,
        stage=ctx.stage,
        files=files,
        metrics=metrics or {},
        metadata=metadata or {},
        inputs=list(ctx.inputs.values()),
    )
    tmp = ctx.output_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2))
    os.replace(tmp, ctx.output_dir / MANIFEST_NAME)
    print(f"manifest: {ctx.output_dir / MANIFEST_NAME} ({len(files)} files)", flush=True)
    return manifest

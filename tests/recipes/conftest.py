"""Recipe tests run the scripts as a user would: a fresh process, a resolved config, no orchestrator.

The session fixtures make the three data artifacts once, at test scale, for every recipe test
that consumes them (pretrain, SFT, RL, eval); `write_resolved_config` writes the file the
orchestrator would hand a recipe, so a test can point a stage at those artifacts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from tasks.stages import STAGES_BY_ID

PROJECT = Path(__file__).resolve().parents[2]

#: A corpus big enough for a BPE of 1,024 tokens and a few pretraining steps, made in seconds.
PRETRAIN_OVERRIDES = {"corpus.max_bytes": 300_000, "tokenizer.vocab_size": 1024, "split.valid_fraction": 0.05}
SFT_OVERRIDES = {"examples": 2000, "held_out": 100}
RL_OVERRIDES = {"prompts": 500, "held_out": 100}


def offline_snapshot(size: int) -> Any:
    from recipes.nano3.data_prep import sources
    from tasks.data_sources import offline_shards

    return sources.snapshot(str(offline_shards("python_docstrings", size)))


def config_path(stage: str, name: str = "tiny") -> Path:
    return STAGES_BY_ID[stage].config_dir / f"{name}.yaml"


def write_resolved_config(
    path: Path,
    stage: str,
    base_yaml_path: Path,
    output_dir: Path,
    work_dir: Path,
    inputs: Mapping[str, tuple[Path, str]] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """The stage's YAML plus the `run` block the orchestrator resolves; override keys may be dotted."""
    cfg = OmegaConf.load(base_yaml_path)
    cfg.run = OmegaConf.merge(cfg.get("run") or {}, {
        "stage": stage,
        "output_dir": str(output_dir),
        "work_dir": str(work_dir),
        "seed": int(cfg.get("seed", 1234)),
        "inputs": {
            name: {"name": Path(folder).name, "version": "v1", "digest": "sha256:test", "type": kind,
                   "path": str(folder)}
            for name, (folder, kind) in (inputs or {}).items()
        },
    })
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=True)
    corpus = cfg.get("corpus") or {}
    if corpus.get("source") == "files" and "sources" not in cfg.run:
        # What the orchestrator does (tasks.data_sources): the offline shards' snapshot.
        cfg.run.sources = {"corpus": offline_snapshot(int(corpus.fill_bytes)).model_dump()}
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path)
    return path


def recipe_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This checkout first on the path, and the hub switched off so a stray download fails at once."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra or {})
    return env


def start_recipe(stage: str, config: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start without waiting, so independent runs share the machine's cores."""
    return subprocess.Popen(
        [sys.executable, str(STAGES_BY_ID[stage].script_path), "--config", str(config)],
        cwd=PROJECT, env=recipe_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait(process: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_recipe(stage: str, config: Path, env: Mapping[str, str] | None = None, timeout: float = 600):
    return wait(start_recipe(stage, config, env), timeout)


def produce(stage: str, root: Path, overrides: Mapping[str, Any]) -> Path:
    """Run a data stage's tiny config, shrunk by `overrides`, into root/output; fail loudly if it fails."""
    config = write_resolved_config(root / "config.yaml", stage, config_path(stage), root / "output", root / "work",
                                   overrides=overrides)
    result = run_recipe(stage, config)
    assert result.returncode == 0, f"{stage} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return root / "output"


@pytest.fixture(scope="session")
def pretrain_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return produce("data_prep/pretrain", tmp_path_factory.mktemp("pretrain_data"), PRETRAIN_OVERRIDES)


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return produce("data_prep/sft", tmp_path_factory.mktemp("sft_data"), SFT_OVERRIDES)


@pytest.fixture(scope="session")
def rl_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return produce("data_prep/rl", tmp_path_factory.mktemp("rl_data"), RL_OVERRIDES)

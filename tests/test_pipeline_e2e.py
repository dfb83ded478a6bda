"""The real pipeline, as users run it: `python -m flows.nano3`, sized for CI.

One module-scoped store: the first run does the work; later tests check what a rerun, a changed
override and a crash cost. Every run goes through a fresh process, the local Prefect server of
its HOME, NeMo-Run's LocalExecutor and the real recipes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.artifacts import ArtifactStore
from tasks.stages import STAGES

PROJECT = Path(__file__).resolve().parent.parent

#: Small but real: the model must still learn arithmetic in SFT so eval can show it.
CI_SIZE = [
    "corpus.max_bytes=1000000",
    "tokenizer.vocab_size=2048",
    "examples=6000",
    "prompts=400",
]
STAGE_SIZE = {
    "pretrain": ["train.train_iters=60", "train.save_interval=20", "train.eval_interval=30"],
}


def nano3(home: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(home), PREFECT_HOME=str(home / ".prefect"),
               NANO3_ARTIFACTS_ROOT=str(home / "store"), WANDB_MODE="offline", NEMORUN_HOME=str(home / "nemo_run"))
    env.pop("NEMOTRON_ENV_FILE", None)
    return subprocess.run([sys.executable, "-m", "flows.nano3", *args], cwd=home, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


def statuses(output: str) -> dict[str, str]:
    """stage → status, read from the summary table the command prints."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) >= 2 and cells[0] in {s.id for s in STAGES}:
            found[cells[0]] = cells[1]
    return found


def records(home: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (home / "store" / "_runs").glob("*.json")}

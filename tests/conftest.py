"""Shared fixtures: every test runs in its own folder with no env.toml or NeMo-Run state around."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
# Commands run here without PREFECT_API_URL use Prefect's temporary server, one per command: a
# local server kept for later commands (blocks/prefect_server.py) would outlive the test's folder.
# tests/test_prefect_server.py turns it on where it is what is tested.
os.environ.setdefault("NANO3_LOCAL_SERVER_IDLE_MINUTES", "0")
GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("NEMOTRON_ENV_FILE", raising=False)
    for name in ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "LEPTON_WORKSPACE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return work


def write_env(folder: Path, text: str, name: str = "env.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def normalize(text: str) -> str:
    """Remove what changes from run to run or machine to machine: random ids, this checkout's path."""
    text = re.sub(r"--rdzv-id \d+", "--rdzv-id <rdzv-id>", text)
    return text.replace(str(PROJECT), "<project>")


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites the file instead."""
    path = GOLDEN / name
    text = normalize(text)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"golden file {path} is missing: run with UPDATE_GOLDEN=1 once and review it"
    assert text == path.read_text(), f"output differs from {path} (UPDATE_GOLDEN=1 to accept after review)"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, module: str = "flows.nano3") -> Result:
    """The command as a user runs it, in a fresh process, with HOME inside the test folder."""
    home = cwd.parent / "home"
    home.mkdir(exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k != "NEMOTRON_ENV_FILE"}
    full_env.update({"HOME": str(home), "PREFECT_HOME": str(home / ".prefect")})
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def tree(work: Path) -> set[str]:
    """The files under the test's folder: the work dir and the HOME that run_cli gives commands.

    Files only: Prefect creates an empty ~/.prefect when it is imported, which writes nothing.
    """
    return {str(p.relative_to(work.parent)) for p in work.parent.rglob("*") if not p.is_dir()}

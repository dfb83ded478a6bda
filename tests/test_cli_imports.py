"""The fast paths stay fast: what each command imports (nemo_run alone costs 1.5-3 s on 2 cores)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT, write_env

HEAVY = ("nemo_run", "prefect", "torch", "chardet", "omegaconf", "fsspec", "leptonai")
PROBE = f"""
import sys
from flows.cli import app
try:
    app(sys.argv[1:], prog_name="nemotron")
except SystemExit as exit:
    code = exit.code
print("LOADED=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def loaded(args: list[str], cwd: Path) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(PROJECT)},
    )
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if line.startswith("LOADED="))
    return set(filter(None, line.removeprefix("LOADED=").split(",")))


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (["--help"], set()),
        (["nano3", "pretrain", "--help"], set()),
        (["steps", "list"], set()),
        (["steps", "list", "--produces", "training_jsonl"], set()),
        (["steps", "show", "pretrain/transformers"], {"omegaconf"}),
    ],
    ids=["help", "stage-help", "steps-list", "steps-list-filter", "steps-show"],
)
def test_catalog_and_help_load_nothing_heavy(isolated: Path, args: list[str], allowed: set[str]) -> None:
    assert loaded(args, isolated) <= allowed


def test_a_dry_run_loads_nemo_run_but_not_what_planning_never_uses(isolated: Path) -> None:
    write_env(isolated, '[cluster]\nexecutor = "slurm"\naccount = "a"\npartition = "p"\n')
    modules = loaded(["nano3", "pretrain", "-c", "tiny", "-r", "cluster", "-d"], isolated)
    assert "nemo_run" in modules
    assert not modules & {"torch", "chardet"}


def test_a_dry_run_of_a_profile_in_env_toml_does_not_import_prefect(isolated: Path) -> None:
    """The profile models carry no Prefect type and the block lookup runs only for a profile
    env.toml does not have: Prefect is seconds of a dry-run's start-up."""
    write_env(isolated, '[cluster]\nexecutor = "slurm"\naccount = "a"\npartition = "p"\nenv_vars = {HF_TOKEN = "t0ken"}\n')
    for args in (["nano3", "pretrain", "-c", "tiny", "-r", "cluster", "-d"], ["nano3", "pipe", "-b", "cluster", "-d"]):
        assert "prefect" not in loaded(args, isolated), args


def test_keeping_them_out_changes_nothing_in_the_plan(isolated: Path) -> None:
    """The same dry-run in a process that imported torch first (so nothing is kept out)."""
    write_env(isolated, '[cluster]\nexecutor = "slurm"\naccount = "a"\npartition = "p"\ngpus_per_node = 8\n')
    args = ["nano3", "pipe", "-r", "cluster", "-d", "--stages", "pretrain,sft,eval"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(isolated), "PYTHONPATH": str(PROJECT)}
    plans = []
    for prelude in ("", "import torch, chardet; "):
        code = f"{prelude}import sys; from flows.cli import app; app(sys.argv[1:], prog_name='nemotron')"
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=isolated, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        plans.append(re.sub(r"--rdzv-id \d+", "--rdzv-id <id>", proc.stdout))
    assert plans[0].count("=== ") == 3 and "torchrun" in plans[0]
    assert plans[0] == plans[1]

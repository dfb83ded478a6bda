"""`nemotron nano3 …` as users run it, with the seeds' documented commands and env.toml examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.stages import STAGES
from tests.conftest import run_cli, tree, write_env

# The seeds' env.toml examples (docs/nemo_runspec/nemo-run.md), unchanged.
SEEDS_ENV = """
[wandb]
project = "nemotron"
entity = "YOUR-TEAM"

[YOUR-CLUSTER]
executor = "slurm"
account = "YOUR-ACCOUNT"
partition = "batch"
nodes = 2
ntasks_per_node = 8
gpus_per_node = 8
mounts = ["/lustre:/lustre"]

[base-slurm]
executor = "slurm"
account = "my-account"
partition = "gpu"
time = "04:00:00"

[YOUR-CLUSTER-large]
extends = "base-slurm"
nodes = 16
time = "08:00:00"
run_partition = "interactive"
batch_partition = "backfill"
"""


def nemotron(args: list[str], cwd: Path, env: dict[str, str] | None = None):  # noqa: ANN201 - conftest.Result
    return run_cli(args, cwd, env=env, module="flows.cli")


def stage_headers(stdout: str) -> list[str]:
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("=== ")]


def test_the_seeds_pretrain_dry_run_works_as_written(isolated: Path) -> None:
    write_env(isolated, SEEDS_ENV)
    before = tree(isolated)
    result = nemotron(["nano3", "pretrain", "-c", "tiny", "--run", "YOUR-CLUSTER", "--dry-run"], isolated)
    assert result.code == 0, result.stderr
    assert stage_headers(result.stdout) == ["pretrain"]
    out = result.stdout
    assert "profile: YOUR-CLUSTER" in out and "mode: attached (--run)" in out
    assert "#SBATCH --account=YOUR-ACCOUNT" in out and "#SBATCH --partition=batch" in out
    assert "#SBATCH --gpus-per-node=8" in out and "torchrun" in out
    assert "recipes/nano3/pretrain/train.py" in out
    # [wandb] reaches the recipe's config.
    assert "project: nemotron" in out and "entity: YOUR-TEAM" in out
    assert tree(isolated) == before, "a dry-run leaves no files behind"


@pytest.mark.parametrize(
    ("args", "stage", "partition"),
    [
        (["nano3", "data", "prep", "pretrain", "-b", "YOUR-CLUSTER-large", "-d"], "data_prep/pretrain", "backfill"),
        (["nano3", "data", "prep", "sft", "-r", "YOUR-CLUSTER-large", "-d"], "data_prep/sft", "interactive"),
        (["nano3", "data", "prep", "rl", "--batch", "YOUR-CLUSTER", "--dry-run"], "data_prep/rl", "batch"),
        (["nano3", "sft", "-r", "YOUR-CLUSTER", "-d"], "sft", "batch"),
        (["nano3", "rl", "-r", "YOUR-CLUSTER", "-d"], "rl", "batch"),
        (["nano3", "convert", "-b", "YOUR-CLUSTER", "-d"], "convert", "batch"),
        (["nano3", "eval", "-r", "YOUR-CLUSTER-large", "-d"], "eval", "interactive"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_stage_command_plans_its_stage_only(isolated: Path, args: list[str], stage: str, partition: str) -> None:
    write_env(isolated, SEEDS_ENV)
    result = nemotron(args, isolated)
    assert result.code == 0, result.stderr
    assert stage_headers(result.stdout) == [stage]
    assert f"#SBATCH --partition={partition}" in result.stdout


def test_overrides_after_the_options(isolated: Path) -> None:
    write_env(isolated, SEEDS_ENV)
    result = nemotron(["nano3", "pretrain", "--run", "YOUR-CLUSTER", "train.train_iters=5000", "run.env.nodes=8", "-d"], isolated)
    assert result.code == 0, result.stderr
    assert "train_iters: 5000" in result.stdout and "#SBATCH --nodes=8" in result.stdout


def test_pipe_plans_every_stage_or_a_selection(isolated: Path) -> None:
    write_env(isolated, SEEDS_ENV)
    everything = nemotron(["nano3", "pipe", "-r", "YOUR-CLUSTER", "-d"], isolated)
    assert everything.code == 0, everything.stderr
    assert stage_headers(everything.stdout) == [s.id for s in STAGES]
    some = nemotron(["nano3", "pipe", "-b", "YOUR-CLUSTER", "-d", "--stages", "pretrain,sft", "sft:train.lr=1e-4"], isolated)
    assert some.code == 0, some.stderr
    assert stage_headers(some.stdout) == ["pretrain", "sft"]
    assert some.stdout.count("lr: 0.0001") == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nano3", "pretrain", "-c", "tinyy", "-r", "YOUR-CLUSTER", "-d"], ["--config", "no config named 'tinyy'", "did you mean 'tiny'"]),
        (["nano3", "pretrain", "-r", "YOUR-CLUSTR", "-d"], ["no profile named 'YOUR-CLUSTR'", "did you mean 'YOUR-CLUSTER'"]),
        (["nano3", "pretrain", "-r", "YOUR-CLUSTER", "-d", "train.train_iterz=5"],
         ["pretrain/config/tiny.yaml", "train.train_iterz", "did you mean 'train.train_iters'"]),
        (["nano3", "sft", "-r", "YOUR-CLUSTER", "-d", "run.env.gpus_per_nod=8"], ["run.env.gpus_per_nod", "did you mean 'gpus_per_node'"]),
        (["nano3", "rl", "-r", "YOUR-CLUSTER", "-b", "YOUR-CLUSTER", "-d"], ["--run and --batch"]),
        (["nano3", "eval", "-d", "limit"], ["key.path=value"]),
        (["nano3", "pipe", "-d", "--stages", "pretrian"], ["--stages", "did you mean 'pretrain'"]),
        (["nano3", "pipe", "-d", "--stages", "pretrain", "sft:train.lr=1"], ["override for stage 'sft'", "does not include"]),
    ],
    ids=["unknown-config", "unknown-profile", "bad-override-key", "bad-env-key", "run-and-batch", "not-key-value", "unknown-stage",
         "override-for-unselected-stage"],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(isolated: Path, args: list[str], expected: list[str]) -> None:
    write_env(isolated, SEEDS_ENV)
    before = tree(isolated)
    result = nemotron(args, isolated)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    assert tree(isolated) == before


def test_verbose_shows_the_traceback(isolated: Path) -> None:
    write_env(isolated, SEEDS_ENV)
    result = nemotron(["nano3", "pretrain", "-r", "YOUR-CLUSTR", "-d", "--verbose"], isolated)
    assert result.code != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr
    root = nemotron(["-v", "nano3", "pretrain", "-r", "YOUR-CLUSTR", "-d"], isolated)
    assert root.code != 0 and "Traceback" in root.stderr


def test_a_missing_input_stops_before_any_flow_starts(isolated: Path) -> None:
    result = nemotron(["nano3", "sft"], isolated)
    assert result.code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert "run.data: stage sft needs nano3-sft-data:latest" in errors[0]
    assert "(`nemotron nano3 data prep sft` publishes it)" in errors[0]
    assert "Flow run" not in result.stderr, "no Prefect flow was started"


def test_batch_on_this_machine_is_refused(isolated: Path) -> None:
    result = nemotron(["nano3", "data", "prep", "rl", "-b", "local"], isolated)
    assert result.code == 2, result.stderr
    assert "--batch needs a scheduler that keeps the job after this command ends" in result.stderr


def test_help_lists_the_seeds_commands() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["nano3", "--help"])
    for name in ("pretrain", "sft", "rl", "convert", "eval", "pipe", "data"):
        assert f" {name} " in top.stdout
    prep = runner.invoke(app, ["nano3", "data", "prep", "--help"])
    for name in ("pretrain", "sft", "rl"):
        assert f" {name} " in prep.stdout
    stage = runner.invoke(app, ["nano3", "pretrain", "--help"])
    for option in ("--config", "--run", "--batch", "--dry-run", "-c", "-r", "-b", "-d"):
        assert option in stage.stdout
    assert ("Consumes: data (binidx), init_from (checkpoint_hf, optional). Produces: checkpoint_hf "
            "(nano3-pretrain-model).") in " ".join(stage.stdout.split())


def test_an_unknown_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["nano3", "pretrain", "--nodes", "4"])
    assert result.exit_code == 2 and "No such option: --nodes" in result.output


@pytest.mark.timeout(900)
def test_a_stage_runs_here_as_its_own_prefect_flow(isolated: Path) -> None:
    """No -r/-b: this machine. The stage is a Prefect flow named after it, and its artifact is published."""
    first = nemotron(["nano3", "data", "prep", "rl", "prompts=200", "held_out=20"], isolated)
    assert first.code == 0, first.stderr[-3000:]
    assert "for flow 'nano3-data_prep-rl'" in first.stderr
    row = next(line for line in first.stdout.splitlines() if "data_prep/rl" in line)
    assert "ran" in row and "train_prompts=200" in row and "nano3-rl-data:v1" in row
    assert (isolated / ".nano3" / "artifacts" / "_registry" / "nano3-rl-data" / "latest.json").is_file()
    # The submission can be looked at afterwards, its log included.
    listed = nemotron(["runs", "list", "--no-flows"], isolated)
    submission = next(line for line in listed.stdout.splitlines() if line.startswith("│ nano3-data_prep-rl_"))
    assert "local" in submission and "published nano3-rl-data:v1" in submission
    experiment = submission.split("│")[1].strip()
    logs = nemotron(["runs", "logs", experiment], isolated)
    assert logs.code == 0, logs.stderr
    assert "[data_prep/rl] step 1/1 train_prompts=200" in logs.stdout and "manifest:" in logs.stdout
    status = nemotron(["runs", "status", experiment], isolated)
    assert "state:     SUCCEEDED" in status.stdout and "output:    published nano3-rl-data:v1" in status.stdout
    again = nemotron(["steps", "run", "data_prep/rl_prep", "prompts=200", "held_out=20"], isolated)
    assert again.code == 0, again.stderr[-3000:]
    row = next(line for line in again.stdout.splitlines() if "data_prep/rl" in line)
    assert "cached" in row and "nano3-rl-data:v1" in row

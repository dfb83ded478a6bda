"""`nemotron steps list|show|run` through typer's runner, and a step's dry-run as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.step_catalog import load_catalog
from tests.conftest import run_cli, tree, write_env

RUNNER = CliRunner()
SLURM = '[cluster]\nexecutor = "slurm"\naccount = "acct"\npartition = "batch"\n'


def invoke(*args: str):  # noqa: ANN201 - click Result
    return RUNNER.invoke(app, list(args))


def listed_ids(output: str) -> set[str]:
    ids = {m.id for m in load_catalog()}
    return {line.split()[0] for line in output.splitlines() if line.split() and line.split()[0] in ids}


def test_list_shows_every_step_with_its_types() -> None:
    result = invoke("steps", "list")
    assert result.exit_code == 0, result.output
    assert listed_ids(result.stdout) == {m.id for m in load_catalog()}
    row = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["pretrain/transformers"])
    assert "binidx" in row and "checkpoint_hf" in row and "stage pretrain" in row
    row = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["pretrain/megatron_bridge"])
    assert "binidx" in row and "checkpoint_megatron" in row and "stage pretrain" in row


def test_list_produces_training_jsonl_as_in_the_seeds_docs() -> None:
    result = invoke("steps", "list", "--produces", "training_jsonl")
    assert result.exit_code == 0, result.output
    assert listed_ids(result.stdout) == {"data_prep/sft_prep", "data_prep/rl_prep"}


def test_list_consumes_and_category_filters() -> None:
    consumes = invoke("steps", "list", "--consumes", "binidx")
    assert listed_ids(consumes.stdout) == {"pretrain/transformers", "pretrain/megatron_bridge", "sft/trl", "eval/lm_eval",
                                           "eval/model_eval"}
    category = invoke("steps", "list", "--category", "rl")
    assert listed_ids(category.stdout) == {"rl/trl_grpo", "rl/nemo_rl/rlvr"}
    both = invoke("steps", "list", "--consumes", "binidx", "--produces", "checkpoint_hf")
    assert listed_ids(both.stdout) == {"pretrain/transformers", "sft/trl"}
    megatron = invoke("steps", "list", "--consumes", "checkpoint_megatron")
    assert listed_ids(megatron.stdout) == {"sft/megatron_bridge", "rl/nemo_rl/rlvr", "convert/megatron_to_hf"}
    none = invoke("steps", "list", "--consumes", "env_toml")
    assert none.exit_code == 0 and none.stdout.strip() == "no step matches"


def test_list_json_is_the_manifests() -> None:
    result = invoke("steps", "list", "--json", "--produces", "env_toml")
    assert result.exit_code == 0, result.output
    [step] = json.loads(result.stdout)
    assert step["id"] == "env/env_toml" and step["tool"] == "env_toml" and step["configs"] == ["lepton", "slurm", "dgxcloud"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--produces", "training_json"], "--produces: unknown artifact type 'training_json' (did you mean 'training_jsonl'?)"),
        (["--consumes", "weights"], "--consumes: unknown artifact type 'weights' (types: raw_jsonl"),
        (["--category", "pretrian"], "--category: unknown category 'pretrian' (did you mean 'pretrain'?)"),
    ],
)
def test_list_rejects_unknown_filters(args: list[str], expected: str) -> None:
    result = invoke("steps", "list", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: command line: ") and expected in result.stderr


def test_show_a_stage_step() -> None:
    result = invoke("steps", "show", "pretrain/transformers")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "pretrain/transformers — Pretraining (transformers, backend hf)" in out
    assert "stage pretrain: recipes/nano3/pretrain/train.py (torchrun, backend hf)" in out
    assert "• binidx — Pretraining corpus" in out and "• checkpoint_hf — HF model folder" in out
    assert "tiny (default)" in out
    # Values come from the default config itself.
    assert "train.train_iters = 330" in out
    assert "nemotron steps run pretrain/transformers -c tiny [-r|-b PROFILE] [-d] [key=value …]" in out


def test_show_a_megatron_step_says_how_it_runs() -> None:
    result = invoke("steps", "show", "rl/nemo_rl/rlvr")
    assert result.exit_code == 0, result.output
    assert "stage rl: recipes/nano3/rl/train_megatron.py (ray, backend megatron)" in result.stdout
    assert "nemotron steps run rl/nemo_rl/rlvr -c default" in result.stdout


def test_show_json_has_the_stages_types_by_input() -> None:
    """A stage step's types are its stage runtime's (tasks/stages.py); its manifest describes them."""
    result = invoke("steps", "show", "sft/megatron_bridge", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(ref["input"], ref["type"]) for ref in data["consumes"]] == [("data", "training_jsonl"), ("model", "checkpoint_megatron")]
    assert [ref["type"] for ref in data["produces"]] == ["checkpoint_megatron"]
    assert data["consumes"][1]["description"].startswith("The pretrained checkpoint (run.model")


def test_show_json_has_the_config_values() -> None:
    result = invoke("steps", "show", "env/env_toml", "--json")
    params = {p["name"]: p["value"] for p in json.loads(result.stdout)["parameters"]}
    assert params["output_path"] == "env.lepton.toml" and params["force"] is False
    assert list(params["sections"]) == ["wandb", "lepton_base", "lepton"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["show", "pretrain/transfomers"], "unknown step 'pretrain/transfomers' (did you mean 'pretrain/transformers'?)"),
        (["run", "nope/nothing", "-d"], "unknown step 'nope/nothing' (`nemotron steps list` shows every step)"),
        (["run", "sft/trl", "-c", "tinny", "-d"], "--config: step 'sft/trl' has no config named 'tinny' (did you mean 'tiny'?)"),
        (["run", "sft/trl", "-c", "default", "-d"], "config 'default' is step sft/megatron_bridge's (backend megatron)"),
        (["run", "pretrain/transformers", "-c", "no/such.yaml", "-d"], "--config: config file no/such.yaml does not exist"),
    ],
    ids=["show-unknown", "run-unknown", "run-unknown-config", "run-other-backend-config", "run-missing-yaml"],
)
def test_step_errors_are_one_line(args: list[str], expected: str) -> None:
    result = invoke("steps", *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_a_megatron_step_plans_its_own_script(isolated: Path) -> None:
    write_env(isolated, SLURM)
    step = run_cli(["steps", "run", "pretrain/megatron_bridge", "-r", "cluster", "-d"], isolated, module="flows.cli")
    assert step.code == 0, step.stderr
    assert "recipes/nano3/pretrain/train_megatron.py" in step.stdout and "backend: megatron" in step.stdout


def test_run_a_stage_step_dry_run_as_a_user(isolated: Path) -> None:
    """The same plan as `nemotron nano3 data prep pretrain`: the step is a way to run the stage."""
    write_env(isolated, SLURM)
    before = tree(isolated)
    step = run_cli(["steps", "run", "data_prep/pretrain_prep", "-c", "tiny", "-b", "cluster", "-d", "corpus.max_bytes=1000"],
                   isolated, module="flows.cli")
    assert step.code == 0, step.stderr
    assert step.stdout.count("=== ") == 1 and "=== data_prep/pretrain " in step.stdout
    assert "max_bytes: 1000" in step.stdout and "mode: detached (--batch)" in step.stdout
    assert "recipes/nano3/data_prep/pretrain/prep.py" in step.stdout
    assert tree(isolated) == before


def test_run_step_bad_override_key(isolated: Path) -> None:
    write_env(isolated, SLURM)
    result = run_cli(["steps", "run", "sft/trl", "-r", "cluster", "-d", "train.lrr=1"], isolated, module="flows.cli")
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "sft/config/tiny.yaml: train.lrr: override of 'train.lrr'" in result.stderr and "did you mean 'train.lr'" in result.stderr

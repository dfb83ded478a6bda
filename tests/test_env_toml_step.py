"""`nemotron steps run env/env_toml`: writes a valid env.toml from a bundled template, keeps
secrets as placeholders, never overwrites without force=true, and its errors name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blocks.env_toml import load_env_file
from blocks.env_toml_writer import render_env_toml, validate_env_file
from flows.cli import app
from tests.conftest import run_cli

RUNNER = CliRunner()
TEMPLATES = {"slurm": ("env.slurm.toml", {"slurm": "slurm", "slurm_cpu": "slurm"}),
             "lepton": ("env.lepton.toml", {"lepton": "lepton"}),
             "dgxcloud": ("env.dgxcloud.toml", {"dgxcloud": "dgxcloud"})}


def invoke(*args: str):  # noqa: ANN201 - click Result
    return RUNNER.invoke(app, ["steps", "run", "env/env_toml", *args])


@pytest.mark.parametrize("config", list(TEMPLATES))
def test_each_template_writes_a_file_the_loader_accepts(isolated: Path, config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name, profiles = TEMPLATES[config]
    result = invoke("-c", config)
    assert result.exit_code == 0, result.output
    path = isolated / name
    assert f"wrote {path}" in result.stdout
    text = path.read_text()
    assert "${oc.env:" in text
    # Placeholders stay placeholders: nothing from this environment is written.
    assert "${oc.env:HF_TOKEN" in text and "${oc.env:WANDB_API_KEY" in text
    # The same validation every command runs, with the variables a user would export.
    for var in ("SLURM_ACCOUNT", "SLURM_HOST", "USER", "LEPTON_WORKSPACE_ID", "LEPTON_WORKSPACE_TOKEN", "LEPTON_NODE_GROUP",
                "DGXC_BASE_URL", "DGXC_KUBE_APISERVER_URL", "DGXC_CLIENT_ID", "DGXC_CLIENT_SECRET", "DGXC_PROJECT"):
        monkeypatch.setenv(var, f"value-of-{var.lower()}")
    assert dict(validate_env_file(load_env_file(path))) == profiles


def test_the_generated_profiles_work_with_the_other_commands(isolated: Path) -> None:
    """A real user's path: generate, then `profiles list` and a dry-run read it."""
    assert invoke("-c", "slurm").exit_code == 0
    env = {"NEMOTRON_ENV_FILE": str(isolated / "env.slurm.toml"), "SLURM_ACCOUNT": "acct", "SLURM_HOST": "login", "USER": "me",
           "HF_TOKEN": "PLANTED-hf-9a9a"}
    listed = run_cli(["profiles", "list"], isolated, env=env, module="flows.cli")
    assert listed.code == 0, listed.stderr
    assert any("slurm_cpu" in line and "slurm" in line for line in listed.stdout.splitlines())
    assert any("slurm_base" in line and "base for extends" in line for line in listed.stdout.splitlines())
    plan = run_cli(["nano3", "data", "prep", "rl", "-b", "slurm_cpu", "-d"], isolated, env=env, module="flows.cli")
    assert plan.code == 0, plan.stderr
    assert "#SBATCH --partition=cpu" in plan.stdout and "#SBATCH --account=acct" in plan.stdout
    assert "PLANTED-hf-9a9a" not in plan.stdout + plan.stderr


def test_nemotrons_documented_lepton_example_works_as_written(isolated: Path) -> None:
    result = invoke(
        "-c", "lepton", "output_path=env.lepton.toml", "force=true",
        "sections.lepton_base.node_group=ng-a100", "sections.lepton_base.env_vars.WANDB_PROJECT=nano3-runs",
        "sections.lepton_base.env_vars.WANDB_ENTITY=my-team", "sections.lepton_base.env_vars.WANDB_NAME=first",
    )
    assert result.exit_code == 0, result.output
    data = tomllib.loads((isolated / "env.lepton.toml").read_text())
    assert data["lepton_base"]["node_group"] == "ng-a100"
    assert data["lepton_base"]["env_vars"]["WANDB_PROJECT"] == "nano3-runs"
    assert data["lepton"] == {"extends": "lepton_base", "executor": "lepton"}


def test_existing_file_is_kept_unless_force(isolated: Path) -> None:
    target = isolated / "env.slurm.toml"
    target.write_text("# mine\n")
    refused = invoke("-c", "slurm")
    assert refused.exit_code == 2
    assert f"error: {target}: exists; not overwritten (pass force=true to replace it)" in refused.stderr
    assert target.read_text() == "# mine\n"
    replaced = invoke("-c", "slurm", "force=true")
    assert replaced.exit_code == 0, replaced.output
    assert target.read_text().startswith("# nano3-flows execution profiles for a Slurm cluster.")


def test_overrides_reach_the_sections_and_the_output_path(isolated: Path) -> None:
    result = invoke("-c", "slurm", "output_path=clusters/a.toml", "sections.slurm.account=team-a", "sections.slurm.qos=high")
    assert result.exit_code == 0, result.output
    data = tomllib.loads((isolated / "clusters" / "a.toml").read_text())
    assert data["slurm"]["account"] == "team-a" and data["slurm"]["qos"] == "high"
    assert not (isolated / "env.slurm.toml").exists()


def test_dry_run_prints_the_file_and_writes_nothing(isolated: Path) -> None:
    result = invoke("-c", "lepton", "-d", "sections.lepton.node_group=ng-1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"# {isolated / 'env.lepton.toml'} (dry-run: not written; profiles lepton (lepton))")
    assert 'node_group = "ng-1"' in result.stdout
    assert list(isolated.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-c", "slurmm"], ["--config", "no config named 'slurmm'", "did you mean 'slurm'"]),
        (["-c", "slurm", "outptu_path=x.toml"], ["outptu_path", "does not define", "did you mean 'output_path'"]),
        (["-c", "slurm", "sections.slurm.acount=x"], ["env.slurm.toml", "[slurm] acount", "unknown field", "did you mean 'account'"]),
        (["-c", "slurm", "sections.slurm.env_vars.HF_TOKEN=hf_literal_value"], ["[slurm] env_vars.HF_TOKEN", "placeholder", "export HF_TOKEN"]),
        (["-c", "dgxcloud", "sections.dgxcloud.client_secret=literal-secret"], ["[dgxcloud] client_secret", "placeholder"]),
        (["-c", "slurm", "force=maybe"], ["force must be true or false"]),
        (["-c", "slurm", "-r", "cluster"], ["--run", "takes no profile"]),
        (["-c", "slurm", "sections.slurm.nodes"], ["key.path=value"]),
    ],
    ids=["unknown-config", "bad-top-key", "bad-profile-key", "literal-env-secret", "literal-field-secret", "force-not-bool",
         "with-profile", "not-key-value"],
)
def test_bad_input_is_one_error_and_writes_nothing(isolated: Path, args: list[str], expected: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    # A refused secret is never echoed back.
    assert "hf_literal_value" not in result.output and "literal-secret" not in result.output
    assert list(isolated.iterdir()) == []


def test_rendering_round_trips_through_tomllib() -> None:
    sections = {
        "wandb": {"project": 'a "quoted" name', "tags": ["x", "y"]},
        "my cluster": {"executor": "slurm", "nodes": 2, "exclusive": True, "mem": None, "ratio": 0.5,
                       "env_vars": {"A": "${oc.env:A,'d'}", "B.C": "1"}, "mounts": [{"path": "/a", "from": "b"}]},
    }
    text = render_env_toml(sections, preamble="# top\n")
    assert text.startswith("# top\n\n[wandb]\n")
    expected = {name: {k: v for k, v in values.items() if v is not None} for name, values in sections.items()}
    assert tomllib.loads(text) == expected

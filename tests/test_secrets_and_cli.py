"""The dry-run as users run it: every stage planned, short flags, and no planted secret anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.stages import STAGES
from tests.conftest import run_cli, tree, write_env

PLANTED = {
    "wandb_api_key": "PLANTED-wandb-7f3a",
    "artifact_secret": "PLANTED-s3-91c2",
    "passphrase": "PLANTED-pass-5d1e",
    "hf_token": "PLANTED-hf-0b8c",
    "app_secret": "PLANTED-dgx-66aa",
    "lepton_token": "PLANTED-lep-3e9f",
    "docker_key": "PLANTED-dock-2c4d",
    "process_env": "PLANTED-proc-8d8d",
}

ENV = f"""
[wandb]
project = "nano3"
api_key = "{PLANTED['wandb_api_key']}"

[artifacts]
root = "s3://bucket/nano3"
endpoint_url = "http://127.0.0.1:8333"
access_key_id = "key-id"
secret_access_key = "{PLANTED['artifact_secret']}"

[cluster]
executor = "slurm"
account = "acct"
partition = "batch"
run_partition = "interactive"
batch_partition = "backfill"
tunnel = "ssh"
host = "login"
user = "me"
remote_job_dir = "/lustre/me"
identity_passphrase = "{PLANTED['passphrase']}"
env_vars = {{ HF_TOKEN = "{PLANTED['hf_token']}" }}

[dgx]
executor = "dgxcloud"
base_url = "https://dgx/api/v1"
kube_apiserver_url = "https://k8s"
app_id = "ID"
app_secret = "{PLANTED['app_secret']}"
project_name = "p"
container_image = "img"
pvc_nemo_run_dir = "/pvc/run"
pvcs = [{{ claimName = "c", path = "/pvc" }}]
env_vars = {{ HF_TOKEN = "{PLANTED['hf_token']}" }}

[lepton]
executor = "lepton"
container_image = "img"
nemo_run_dir = "/nemo_run"
token = "{PLANTED['lepton_token']}"
env_vars = {{ MY_SECRET = "{PLANTED['hf_token']}" }}

[docker]
executor = "docker"
container_image = "img"
env_vars = {{ API_KEY = "{PLANTED['docker_key']}" }}

[local]
executor = "local"
env_vars = {{ WANDB_API_KEY = "${{oc.env:WANDB_API_KEY}}" }}
"""


def scan(folder: Path, *texts: str) -> list[str]:
    """Every planted secret found in the given texts or in any file under `folder` but env.toml."""
    hits = []
    for secret in PLANTED.values():
        for text in texts:
            if secret in text:
                hits.append(f"{secret} in output")
        for path in folder.rglob("*"):
            if path.is_file() and path.name != "env.toml" and secret.encode() in path.read_bytes():
                hits.append(f"{secret} in {path}")
    return hits


#: The cluster job's secret env vars, named in its plan as a submission sends them: the profile's,
#: the [artifacts] store's credentials and the [wandb] key.
SLURM_LOADS = "loads: AWS_ACCESS_KEY_ID AWS_ENDPOINT_URL AWS_SECRET_ACCESS_KEY HF_TOKEN WANDB_API_KEY"


@pytest.mark.parametrize(
    ("args", "redacted"),
    [
        (["-r", "cluster", "-d"], SLURM_LOADS),
        (["--batch", "cluster", "--dry-run"], SLURM_LOADS),
        (["-r", "dgx", "-d", "--stages", "pretrain"], "client_secret: '********'"),
        (["-b", "lepton", "-d", "--stages", "sft"], "MY_SECRET: '********'"),
        (["-r", "docker", "-d", "--stages", "eval"], "API_KEY: '********'"),
        (["-d", "--stages", "pretrain"], "env_vars: {}"),  # a local job inherits its secrets instead
    ],
    ids=["slurm-run", "slurm-batch", "dgxcloud", "lepton", "docker", "local"],
)
def test_no_secret_in_any_dry_run_output_or_file(isolated: Path, args: list[str], redacted: str) -> None:
    write_env(isolated, ENV)
    before = tree(isolated)
    result = run_cli(args, isolated, env={"WANDB_API_KEY": PLANTED["process_env"]})
    assert result.code == 0, result.stderr
    assert redacted in result.stdout
    assert scan(isolated.parent, result.stdout, result.stderr) == []
    assert tree(isolated) == before, "a dry-run leaves no files behind"


def test_full_plan_has_every_stage_and_the_right_partitions(isolated: Path) -> None:
    write_env(isolated, ENV)
    attached = run_cli(["-r", "cluster", "-d"], isolated)
    detached = run_cli(["-b", "cluster", "-d"], isolated)
    for result in (attached, detached):
        assert result.code == 0, result.stderr
        for stage in STAGES:
            assert f"=== {stage.id} " in result.stdout
            assert f"recipes/nano3/{stage.folder}/{stage.script}" in result.stdout
    assert attached.stdout.count("#SBATCH --partition=interactive") == len(STAGES)
    assert detached.stdout.count("#SBATCH --partition=backfill") == len(STAGES)
    assert SLURM_LOADS in attached.stdout and SLURM_LOADS in detached.stdout


def test_profiles_show_redacts(isolated: Path) -> None:
    write_env(isolated, ENV)
    for name in ("cluster", "dgx", "lepton"):
        result = run_cli(["profiles", "show", name], isolated, module="flows.cli")
        assert result.code == 0, result.stderr
        assert "**********" in result.stdout
        assert scan(isolated, result.stdout, result.stderr) == []


def test_profiles_list_from_env_toml(isolated: Path) -> None:
    write_env(isolated, ENV)
    result = run_cli(["profiles", "list"], isolated, module="flows.cli", env={"WANDB_API_KEY": "x"})
    assert result.code == 0, result.stderr
    for name, executor in [("cluster", "slurm"), ("dgx", "dgxcloud"), ("lepton", "lepton"), ("docker", "docker")]:
        assert any(name in line and executor in line for line in result.stdout.splitlines())


def test_profiles_push_and_list_blocks(isolated: Path) -> None:
    """Through the CLI against the local Prefect server that `push` starts (HOME is the test folder)."""
    write_env(isolated, ENV)
    pushed = run_cli(["profiles", "push"], isolated, module="flows.cli", env={"WANDB_API_KEY": PLANTED["process_env"]})
    assert pushed.code == 0, pushed.stderr
    assert "cluster -> nano3-execution-profile/cluster" in pushed.stdout
    listed = run_cli(["profiles", "list", "--blocks"], isolated, module="flows.cli")
    assert listed.code == 0, listed.stderr
    assert "block:local" in listed.stdout
    assert listed.code == 0, listed.stderr
    assert "block:dgx" in listed.stdout and "block:cluster" in listed.stdout
    # No env.toml any more: `--run cluster` now finds the block.
    (isolated / "env.toml").unlink()
    plan = run_cli(["-r", "cluster", "-d", "--stages", "eval"], isolated)
    assert plan.code == 0, plan.stderr
    assert "profile_origin: block:cluster" in plan.stdout and "#SBATCH --partition=interactive" in plan.stdout
    assert scan(isolated.parent, plan.stdout, plan.stderr, pushed.stdout, listed.stdout) == []

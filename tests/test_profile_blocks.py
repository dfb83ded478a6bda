"""Profiles as Prefect blocks against a real (temporary) Prefect server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from blocks.env_toml import load_env_file
from blocks.executors import ExecutionTarget, build_executor, describe
from blocks.profile_blocks import (
    ExecutionProfileBlock,
    WandbSettings,
    block_name,
    list_profile_blocks,
    push_env_file,
)
from blocks.profile_lookup import resolve_profile
from blocks.errors import ConfigError
from blocks.profiles import parse_profile
from tests.conftest import write_env

ENV = """
[wandb]
project = "nano3"
api_key = "WANDB_KEY_PLANTED"

[base-slurm]
executor = "slurm"
account = "acct"
partition = "gpu"
time = "04:00:00"
tunnel = "ssh"
host = "login"
user = "me"
remote_job_dir = "/lustre/me"
identity_passphrase = "PASSPHRASE_PLANTED"
env_vars = { HF_TOKEN = "HF_PLANTED", NCCL_DEBUG = "INFO" }

[My_Cluster]
extends = "base-slurm"
nodes = 4
gpus_per_node = 8

[dgx]
executor = "dgxcloud"
base_url = "https://dgx/api/v1"
kube_apiserver_url = "https://k8s"
client_id = "ID"
client_secret = "DGX_PLANTED"
project_name = "p"
container_image = "img"
pvc_nemo_run_dir = "/pvc/run"
pvcs = [{ claimName = "c", path = "/pvc" }]
"""
PLANTED = ("WANDB_KEY_PLANTED", "PASSPHRASE_PLANTED", "HF_PLANTED", "DGX_PLANTED")


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[Path]:
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = get_current_settings().server.database.connection_url
        yield Path(url.get_secret_value().split(":///", 1)[-1])


def test_push_then_load_gives_the_same_executor(isolated: Path, prefect_server: Path) -> None:
    env = load_env_file(write_env(isolated, ENV))
    assert push_env_file(env) == ["base-slurm", "my-cluster", "dgx"]
    for name in ("My_Cluster", "dgx"):
        from_file = parse_profile(env.profile(name), file=str(env.path), section=name)
        block = ExecutionProfileBlock.load(block_name(name))
        assert block.profile_name == name and block.source == str(env.path)
        assert block.profile == from_file
        for detached in (False, True):
            a = describe(build_executor(ExecutionTarget(from_file, detached=detached)))
            b = describe(build_executor(ExecutionTarget(block.profile, detached=detached)))
            assert a == b
    assert WandbSettings.load("default").settings.api_key.get_secret_value() == "WANDB_KEY_PLANTED"


def test_secrets_are_stored_encrypted(isolated: Path, prefect_server: Path) -> None:
    from prefect.client.orchestration import get_client

    push_env_file(load_env_file(write_env(isolated, ENV)))
    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name("my-cluster", "nano3-execution-profile", include_secrets=False)
    profile = doc.data["profile"]
    assert profile["identity_passphrase"] == "********"
    assert profile["secret_env_vars"] == {"HF_TOKEN": "********"}
    assert profile["env_vars"] == {"NCCL_DEBUG": "INFO"}
    raw = prefect_server.read_bytes()
    for secret in PLANTED:
        assert secret.encode() not in raw, f"{secret} stored in clear in the Prefect database"


def test_list_blocks(isolated: Path, prefect_server: Path) -> None:
    push_env_file(load_env_file(write_env(isolated, ENV)))
    listed = {b.profile_name: b.profile.executor for b in list_profile_blocks()}
    assert listed["My_Cluster"] == "slurm" and listed["dgx"] == "dgxcloud"


def test_lookup_prefers_env_toml_then_blocks(isolated: Path, prefect_server: Path) -> None:
    push_env_file(load_env_file(write_env(isolated, ENV)))
    local_env = load_env_file(
        write_env(isolated, '[My_Cluster]\nexecutor = "slurm"\naccount = "other"\n', name="other.toml")
    )
    from_file = resolve_profile("My_Cluster", local_env)
    assert from_file.origin.startswith("env.toml:") and from_file.profile.account == "other"
    from_block = resolve_profile("My_Cluster", None)
    assert from_block.origin == "block:my-cluster" and from_block.profile.nodes == 4
    # Fields the file did not set stay open to the recipe's run.env defaults.
    assert "nodes" in from_block.explicit and "cpus_per_task" not in from_block.explicit
    with pytest.raises(ConfigError, match="no profile named 'nope'"):
        resolve_profile("nope", local_env)


def test_bad_env_toml_pushes_nothing(isolated: Path, prefect_server: Path) -> None:
    from prefect.client.orchestration import get_client

    bad = ENV.replace('[dgx]\nexecutor = "dgxcloud"', '[dgx]\nexecutor = "dgxcloudd"').replace("[My_Cluster]", "[fresh]")
    with pytest.raises(ConfigError, match="dgxcloudd"):
        push_env_file(load_env_file(write_env(isolated, bad)))
    with get_client(sync_client=True) as client:
        names = {d.name for d in client.read_block_documents_by_type("nano3-execution-profile")}
    assert "fresh" not in names


def test_secret_env_vars_are_secret_in_the_block_schema_as_a_secret_dict() -> None:
    """The profile models use their own SecretEnvVars (no Prefect import to parse a profile); the
    block marks every value under it secret and its schema (so the block's checksum) is the one
    Prefect's SecretDict gives."""
    from pydantic import TypeAdapter
    from prefect.types import SecretDict

    from blocks.profiles import SecretEnvVars

    assert TypeAdapter(SecretEnvVars).json_schema() == TypeAdapter(SecretDict).json_schema()
    secret_fields = ExecutionProfileBlock.model_json_schema()["secret_fields"]
    assert "profile.secret_env_vars.*" in secret_fields and "profile.secret_env_vars" not in secret_fields
    assert {"profile.identity_passphrase", "profile.client_secret", "profile.token"} <= set(secret_fields)

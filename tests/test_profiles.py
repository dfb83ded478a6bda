"""Typed profiles: the seeds' keys and aliases, secrets kept as SecretStr."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from blocks.errors import ConfigError
from blocks.profiles import DGXCloudProfile, LeptonProfile, LocalProfile, SlurmProfile, parse_profile


def parse(data: dict) -> object:
    return parse_profile(data, file="env.toml", section="p")


def test_missing_executor_means_local() -> None:
    assert isinstance(parse({"nproc_per_node": 2}), LocalProfile)


def test_seed_aliases_are_accepted() -> None:
    dgx = parse(
        {
            "executor": "dgxcloud",
            "base_url": "https://dgx/api/v1",
            "kube_apiserver_url": "https://k8s",
            "app_id": "ID",
            "app_secret": "S3CRET",
            "project_name": "p",
            "container": "nvcr.io/nvidia/nemo:latest",
            "pvc_nemo_run_dir": "/pvc/nemo_run",
            "pvcs": [{"claimName": "c", "path": "/pvc", "readOnly": False}],
        }
    )
    assert isinstance(dgx, DGXCloudProfile)
    assert dgx.client_id == "ID" and dgx.container_image == "nvcr.io/nvidia/nemo:latest"
    assert isinstance(dgx.client_secret, SecretStr) and dgx.client_secret.get_secret_value() == "S3CRET"
    assert "S3CRET" not in repr(dgx)


def test_secret_looking_env_vars_become_secret() -> None:
    slurm = parse({"executor": "slurm", "account": "a", "env_vars": {"HF_TOKEN": "hf_x", "WANDB_API_KEY": "wk", "N": 3}})
    assert isinstance(slurm, SlurmProfile)
    assert slurm.env_vars == {"N": "3"}
    assert slurm.secret_env() == {"HF_TOKEN": "hf_x", "WANDB_API_KEY": "wk"}
    assert "hf_x" not in repr(slurm) and "hf_x" not in slurm.model_dump_json()
    assert sorted(slurm.secrets()) == ["hf_x", "wk"]


def test_partitions_for_attached_and_detached() -> None:
    slurm = parse({"executor": "slurm", "account": "a", "partition": "batch", "run_partition": "interactive"})
    assert slurm.partition_for(detached=False) == "interactive"
    assert slurm.partition_for(detached=True) == "batch"


def test_lepton_mounts_are_typed() -> None:
    lepton = parse(
        {
            "executor": "lepton",
            "container_image": "img",
            "nemo_run_dir": "/nemo_run",
            "mounts": [{"path": "/data", "mount_path": "/data", "from": "node-nfs:shared"}],
            "token": "lep_tok",
        }
    )
    assert isinstance(lepton, LeptonProfile)
    assert lepton.mounts[0].from_ == "node-nfs:shared"
    assert lepton.secrets() == ["lep_tok"]


@pytest.mark.parametrize(
    ("data", "key", "text"),
    [
        ({"executor": "slurm", "tunnel": "ssh", "user": "u"}, "host", "tunnel = 'ssh'"),
        ({"executor": "slurm", "account": "a", "nodes": 0}, "nodes", "greater than or equal to 1"),
        ({"executor": "local", "packager": "zip"}, "packager", "git"),
        (
            {
                "executor": "dgxcloud",
                "base_url": "b",
                "kube_apiserver_url": "k",
                "client_id": "i",
                "client_secret": "s",
                "project_name": "p",
                "container_image": "c",
                "pvc_nemo_run_dir": "/elsewhere/x",
                "pvcs": [{"path": "/pvc"}],
            },
            "pvc_nemo_run_dir",
            "not under the 'path'",
        ),
    ],
)
def test_field_errors_name_the_key(data: dict, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert info.value.key == key and info.value.section == "p" and info.value.file == "env.toml"
    assert text in str(info.value)


def test_secret_values_are_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"executor": "lepton", "container_image": "i", "nemo_run_dir": "/n", "token": {"nested": "tok_LEAK"}})
    assert "tok_LEAK" not in str(info.value)

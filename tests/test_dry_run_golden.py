"""Golden files pin the exact submissions: a matrix of Slurm profiles, and docker/dgxcloud/lepton executors.

The plans go through the same path as `python -m flows.nano3 -r/-b PROFILE -d`. Review a diff in
tests/golden/ like a diff of code: it is what would be sent to the cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.run_options import RunOptions, resolve_context, stage_jobs
from tasks.stages import STAGES_BY_ID
from tasks.submission import plan_submission, render_plan
from tests.conftest import assert_golden, write_env

ENV_TOML = """
[wandb]
project = "nano3"
entity = "team"

[cluster]
executor = "slurm"
account = "acct"
partition = "batch"
run_partition = "interactive"
batch_partition = "backfill"
time = "01:30:00"
job_dir = "/shared/jobs"

[cluster-gpu]
extends = "cluster"
nodes = 2
gpus_per_node = 8
cpus_per_task = 16
mem = "0"
exclusive = true
env_vars = { NCCL_DEBUG = "WARN", HF_TOKEN = "hf_GOLDEN_SECRET" }

[cluster-container]
extends = "cluster-gpu"
container_image = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
mounts = ["/lustre:/lustre", "/data:/data"]

[login-ssh]
executor = "slurm"
account = "acct"
partition = "gpu"
tunnel = "ssh"
host = "login.cluster.example.com"
user = "me"
identity = "/keys/id_ed25519"
identity_passphrase = "PASSPHRASE_GOLDEN"
remote_job_dir = "/lustre/me/jobs"
nodes = 4
gpus_per_node = 8
time = "08:00:00"
container_image = "/lustre/me/nano3.sqsh"
mounts = ["/lustre:/lustre"]

[plain]
executor = "slurm"
account = "acct"
partition = "only"
job_dir = "/shared/jobs"

[docker]
executor = "docker"
container_image = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
gpus_per_node = 8
shm_size = "16g"
ipc_mode = "host"
mounts = ["/data:/data"]
env_vars = { WANDB_API_KEY = "wandb_GOLDEN_SECRET" }

[dgxcloud]
executor = "dgxcloud"
base_url = "https://dgx.example.com/api/v1"
kube_apiserver_url = "https://dgx-k8s.example.com"
app_id = "CLIENT-ID"
app_secret = "DGX_GOLDEN_SECRET"
project_name = "nano3"
container_image = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
pvc_nemo_run_dir = "/pvc/nemo_run"
nodes = 2
gpus_per_node = 8
nprocs_per_node = 8
pvcs = [{ claimName = "team-pvc", path = "/pvc", readOnly = false }]
custom_spec = { schedulerName = "runai-scheduler" }

[lepton]
executor = "lepton"
container_image = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
nemo_run_dir = "/nemo_run"
nodes = 2
gpus_per_node = 8
nprocs_per_node = 8
resource_shape = "gpu.8xh100-80gb"
node_group = "team-nodes"
mounts = [{ path = "/shared", mount_path = "/shared", from = "node-nfs:team" }]
token = "LEPTON_GOLDEN_SECRET"
env_vars = { HF_HOME = "/shared/hf" }

# Where to connect and nothing about the job's size or image: each stage's recipe says those.
[dgxcloud-open]
executor = "dgxcloud"
base_url = "https://dgx.example.com/api/v1"
app_id = "CLIENT-ID"
app_secret = "DGX_GOLDEN_SECRET"
project_name = "nano3"
pvc_nemo_run_dir = "/pvc/nemo_run"
pvcs = [{ claimName = "team-pvc", path = "/pvc", readOnly = false }]

[lepton-open]
executor = "lepton"
nemo_run_dir = "/nemo_run"
node_group = "team-nodes"
token = "LEPTON_GOLDEN_SECRET"
"""

SECRETS = ("hf_GOLDEN_SECRET", "PASSPHRASE_GOLDEN", "wandb_GOLDEN_SECRET", "DGX_GOLDEN_SECRET", "LEPTON_GOLDEN_SECRET")


def plan_text(isolated: Path, stage: str, *, run: str | None = None, batch: str | None = None, config: str = "tiny",
              overrides: tuple[str, ...] = ()) -> str:
    write_env(isolated, ENV_TOML)
    context = resolve_context(RunOptions(config=config, run=run, batch=batch, dry_run=True, overrides=overrides))
    (job,) = stage_jobs(context, [STAGES_BY_ID[stage]])
    text = render_plan(plan_submission(job, detached=batch is not None))
    for secret in SECRETS:
        assert secret not in text
    return text.replace(str(isolated), "<work>")


SLURM_MATRIX = [
    ("attached-bare", dict(run="cluster"), "data_prep/pretrain", ()),
    ("detached-bare", dict(batch="cluster"), "data_prep/pretrain", ()),
    ("attached-gpus-torchrun", dict(run="cluster-gpu"), "pretrain", ()),
    ("detached-container", dict(batch="cluster-container"), "pretrain", ("run.env.time=02:00:00",)),
    ("ssh-container", dict(run="login-ssh"), "sft", ()),
    ("partition-fallback", dict(batch="plain"), "eval", ("run.env.env_vars.EXTRA=1",)),
    ("default-config-resources", dict(run="plain"), "pretrain", ()),
]


@pytest.mark.parametrize(("name", "mode", "stage", "overrides"), SLURM_MATRIX, ids=[m[0] for m in SLURM_MATRIX])
def test_slurm_plans(isolated: Path, name: str, mode: dict, stage: str, overrides: tuple[str, ...]) -> None:
    config = "default" if name == "default-config-resources" else "tiny"
    assert_golden(f"slurm/{name}.txt", plan_text(isolated, stage, config=config, overrides=overrides, **mode))


def test_partition_follows_the_mode(isolated: Path) -> None:
    assert "#SBATCH --partition=interactive" in plan_text(isolated, "eval", run="cluster")
    assert "#SBATCH --partition=backfill" in plan_text(isolated, "eval", batch="cluster")
    assert "#SBATCH --partition=only" in plan_text(isolated, "eval", batch="plain")


def test_container_flags_only_with_an_image(isolated: Path) -> None:
    bare = plan_text(isolated, "pretrain", run="cluster-gpu")
    assert "--container-image" not in bare and "--container-mounts" not in bare
    boxed = plan_text(isolated, "pretrain", run="cluster-container")
    assert "--container-image nvcr.io/nvidia/nemo:25.11.nemotron_3_nano" in boxed
    assert "--container-mounts /lustre:/lustre,/data:/data," in boxed


def test_slurm_secrets_are_sourced_not_written(isolated: Path) -> None:
    text = plan_text(isolated, "pretrain", run="cluster-gpu")
    assert "export NCCL_DEBUG=WARN" in text
    assert "export HF_TOKEN" not in text
    assert "set +vx; set -a; . '/shared/jobs/.nano3-secrets/<submission>.env'; set +a; rm -f " in text
    assert "# loads: HF_TOKEN" in text


def test_default_config_resources_reach_the_executor(isolated: Path) -> None:
    """The recipe's run.env (2 nodes × 8 GPUs for pretrain/default) applies when the profile is silent."""
    text = plan_text(isolated, "pretrain", run="plain", config="default")
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=8" in text
    assert "--container-image nvcr.io/nvidia/nemo:25.11.nemotron_3_nano" in text
    # ...and the profile wins where it speaks; an override wins over both.
    text = plan_text(isolated, "pretrain", run="cluster-gpu", config="default", overrides=("run.env.nodes=3",))
    assert "#SBATCH --nodes=3" in text
    text = plan_text(isolated, "pretrain", run="cluster-gpu", config="default")
    assert "#SBATCH --nodes=2" in text and re.search(r"^nodes: 2 +# profile \[cluster-gpu\]$", text, re.M)
    # A single-process stage on the same GPU profile runs once per node, not once per GPU; the
    # profile's node count is the profile's (the seeds' order), and the plan says so.
    text = plan_text(isolated, "convert", run="cluster-gpu", config="default")
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --nodes=2" in text
    assert re.search(r"^gpus_per_node: 8 +# profile \[cluster-gpu\]$", text, re.M)


@pytest.mark.parametrize("profile", ["docker", "dgxcloud", "lepton"])
def test_cloud_and_container_executors(isolated: Path, profile: str) -> None:
    assert_golden(f"executors/{profile}.txt", plan_text(isolated, "sft", run=profile))


def test_wandb_section_arrives_as_run_wandb(isolated: Path) -> None:
    text = plan_text(isolated, "pretrain", run="cluster")
    assert "  wandb:\n    project: nano3\n    entity: team" in text

"""The local Slurm behaves like a cluster: jobs run, accounting records them, GPUs are handed out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import local_slurm
import pytest
from local_daemons import DevServiceError
from local_slurm import SlurmCluster, running_daemons, start_slurm

from tests.infra.slurm_commands import sacct_row, sbatch, slurm_env


def test_batch_jobs_end_in_sacct_with_their_exit_codes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    ok = sbatch(slurm_cluster, "-p", slurm_cluster.partition, "-A", "root", "-o", "ok-%j.out",
                "--wrap", "echo hello from $SLURM_JOB_ID", cwd=tmp_path)
    failing = sbatch(slurm_cluster, "-o", "/dev/null", "--wrap", "exit 3", cwd=tmp_path)

    assert sacct_row(slurm_cluster, ok) == {"State": "COMPLETED", "ExitCode": "0:0"}
    assert sacct_row(slurm_cluster, failing) == {"State": "FAILED", "ExitCode": "3:0"}
    assert (tmp_path / f"ok-{ok}.out").read_text() == f"hello from {ok}\n"


def test_a_gpu_job_sees_cuda_visible_devices(slurm_cluster_with_gpus: SlurmCluster, tmp_path: Path) -> None:
    one = sbatch(slurm_cluster_with_gpus, "--gpus-per-node=1", "-o", "one.out",
                 "--wrap", "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES", cwd=tmp_path)
    both = sbatch(slurm_cluster_with_gpus, f"--gpus-per-node={slurm_cluster_with_gpus.gpus}", "-o", "both.out",
                  "--wrap", "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES", cwd=tmp_path)

    assert sacct_row(slurm_cluster_with_gpus, one, "State,AllocTRES")["AllocTRES"].count("gres/gpu=1") == 1
    assert sacct_row(slurm_cluster_with_gpus, both)["State"] == "COMPLETED"
    assert (tmp_path / "one.out").read_text().strip() in {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"}
    assert (tmp_path / "both.out").read_text().strip() == "CUDA_VISIBLE_DEVICES=0,1"


def test_asking_for_more_gpus_than_the_node_has_is_refused(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    refused = subprocess.run(["sbatch", f"--gpus-per-node={slurm_cluster.gpus + 1}", "--wrap", "true"],
                             cwd=tmp_path, env=slurm_env(slurm_cluster), capture_output=True, text=True)

    assert refused.returncode != 0
    assert "Requested node configuration is not available" in refused.stderr


def test_pyxis_options_are_accepted_and_the_step_runs_on_the_host_in_its_workdir(slurm_cluster: SlurmCluster,
                                                                                 tmp_path: Path) -> None:
    assert slurm_cluster.host_containers
    work = tmp_path / "step-workdir"
    work.mkdir()
    ran = subprocess.run(["srun", "--container-image=nano3.sqsh", f"--container-mounts={tmp_path}:{tmp_path},{work}",
                          f"--container-workdir={work}", "--container-name=ray-head", "--no-container-mount-home",
                          "--mpi=pmix", "pwd"],
                         cwd=tmp_path, env=slurm_env(slurm_cluster), capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"{work}\n"


def test_a_mount_only_a_container_could_make_fails_the_step_and_names_it(slurm_cluster: SlurmCluster,
                                                                         tmp_path: Path) -> None:
    refused = subprocess.run(["srun", "--container-image=nano3.sqsh", f"--container-mounts={tmp_path}:/data", "true"],
                             cwd=tmp_path, env=slurm_env(slurm_cluster), capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert f"the mount {tmp_path}:/data needs a container" in refused.stderr


def test_starting_again_reuses_the_running_daemons(slurm_cluster: SlurmCluster) -> None:
    before = running_daemons(Path(slurm_cluster.dir))

    again = start_slurm(Path(slurm_cluster.dir), gpus=slurm_cluster.gpus)
    with pytest.raises(DevServiceError, match="with 2 fake GPUs, partition debug and host containers on; stop it first"):
        start_slurm(Path(slurm_cluster.dir), gpus=slurm_cluster.gpus + 1)

    assert again == slurm_cluster
    assert running_daemons(Path(slurm_cluster.dir)) == before
    assert all(before.values())


def test_the_command_line_reports_status_and_the_conf_to_export(slurm_cluster: SlurmCluster) -> None:
    script = local_slurm.__file__

    status = subprocess.run([sys.executable, script, "status", "--dir", slurm_cluster.dir],
                            capture_output=True, text=True)
    start = subprocess.run([sys.executable, script, "start", "--dir", slurm_cluster.dir],
                           capture_output=True, text=True)

    assert status.returncode == 0 and status.stdout.count("running, pid") == 5
    assert start.returncode == 0
    assert start.stdout.splitlines() == [f"already running in {slurm_cluster.dir}",
                                         f"export SLURM_CONF={slurm_cluster.slurm_conf}"]

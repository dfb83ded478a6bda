"""`ray` stages on a real Slurm: NeMo-Run's SlurmRayJob with a container image, the launcher without.

The test cluster loads scripts/dev/host_containers.c, which accepts pyxis's `--container-*` srun
options and runs each step on the host (no container runtime here): NeMo-Run's own ray.sub then
starts the Ray head on the Slurm node, probes it, and runs the stage's script as its driver. A data
prep job done that way gives the bytes of the single-process encoder. A queued Ray job is
re-attached, not submitted again, and cancels. Without an image the same kind of stage runs
recipes/nano3/ray_cluster.py through an Experiment.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from blocks.profiles import parse_profile
from tasks import ray_jobs
from tasks.artifacts import ArtifactStore
from tasks.job_config import JobConfig, build_job_config, parse_overrides
from tasks.stage_task import prepare_stage
from tasks.stages import STAGES_BY_ID
from tasks.submissions import cancel, find_record, job_info, open_experiment
from tasks.submit import submit_and_wait
from tests.infra.slurm_commands import sacct_row, sbatch, slurm_env
from tests.infra.slurm_stages import PRODUCE, slurm_job, slurm_profile, slurm_toy_flow

pytestmark = pytest.mark.usefixtures("prefect_api")

#: The toy producer as a `ray` stage (RL and data prep at scale are, on backend megatron).
RAY_PRODUCE = dataclasses.replace(PRODUCE, id="toy/ray-produce", artifact="toy-ray-numbers", launcher="ray")
IMAGE = "nano3-test.sqsh"
SECRET = "hf-token-of-the-ray-job"
PREP = STAGES_BY_ID["data_prep/pretrain"]


@pytest.fixture
def store(isolated: Path) -> ArtifactStore:
    return ArtifactStore(str(isolated / "store"))


def job_dir(isolated: Path) -> Path:
    return isolated / "nemorun" / "experiments"


def prep_job(isolated: Path, engine: str, profile: object, profile_name: str) -> JobConfig:
    """The pretraining data prep on backend megatron (a `ray` stage), at 1 MB, encoding with `engine`."""
    config = isolated / f"tiny-{engine}.yaml"
    config.write_text(PREP.config_dir.joinpath("tiny.yaml").read_text() + f"encode:\n  engine: {engine}\n  workers: 2\n")
    return build_job_config(PREP, str(config), profile=profile, profile_name=profile_name, profile_origin="test",
                            overrides=parse_overrides(("run.backend=megatron", "corpus.fill_bytes=1000000",
                                                       "tokenizer.vocab_size=1024")))


def test_a_data_prep_ray_job_starts_ray_on_the_slurm_node_and_gives_the_single_process_bytes(
        cluster, store: ArtifactStore, isolated: Path) -> None:  # noqa: ANN001
    # Ray's temp folder must be short (its sockets' paths are capped) and the job's own.
    ray_temp = tempfile.mkdtemp(prefix="ray-")
    job = prep_job(isolated, "ray", slurm_profile(job_dir(isolated), container_image=IMAGE, cpus_per_task=2,
                                                   env_vars={"HF_TOKEN": SECRET, "RAY_TEMP_DIR": ray_temp}),
                   "local-slurm")
    assert ray_jobs.uses_ray_job(job)
    (result,) = slurm_toy_flow([job], store)
    assert result.status == "ran"
    record = store.read_record(result.artifact.cache_key)
    assert record is not None and record.ray_job == "SlurmRayJob" and record.job_id and record.attempt == 1
    name = ray_jobs.job_name(job, result.artifact.cache_key, 1)
    assert record.experiment_id == name
    assert sacct_row(cluster, record.job_id) == {"State": "COMPLETED", "ExitCode": "0:0"}
    # The executor, saved by NeMo-Run's serializer in its home, readable by the user alone.
    assert (isolated / "nemorun" / "ray_jobs" / name / "executor.json").stat().st_mode & 0o077 == 0
    folder = job_dir(isolated) / name
    script = (folder / "ray.sub").read_text()
    # NeMo-Run's ray.sub: the head in the image's container on the node, the node's whole memory
    # (the profile sets none), the stage's script as driver from the code SlurmRayJob shipped.
    assert f"--container-image={IMAGE} " in script and "--container-name=ray-head" in script
    assert "\n#SBATCH --mem=0\n" in script
    assert f"python {folder}/code/recipes/nano3/data_prep/pretrain/prep.py --config " in script
    assert (folder / "code" / "recipes" / "nano3" / "data_prep" / "binidx.py").is_file()
    assert json.loads((folder / "job_ids.json").read_text()) == [record.job_id]
    # Ray really ran there: the head started by ray.sub, the driver joined it rather than start one.
    logs = folder / "logs"
    assert "Ray runtime started." in (logs / "ray-head.log").read_text()
    driver = (logs / "ray-job.log").read_text()
    assert "Connecting to existing Ray cluster" in driver and "manifest:" in driver
    # One token of the job's own for head, probes and driver, 0600 in its folder, in no log.
    token_file = folder / ray_jobs.RAY_TOKEN_FILE
    assert token_file.stat().st_mode & 0o077 == 0
    assert f"export RAY_AUTH_MODE=token\nexport RAY_AUTH_TOKEN_PATH={token_file}\n" in script
    token = token_file.read_text()
    # The secret waited for the driver in a 0600 file that its command loaded and removed: ray.sub
    # prints each node's environment into its logs, where neither the secret nor the token is.
    secrets = folder / ".secrets.env"
    assert f"set -a; . {secrets}; set +a; rm -f {secrets}; RAY_ADDRESS=auto " in script and not secrets.exists()
    leaked = [path for path in folder.rglob("*") if path.is_file() and path != token_file
              and (SECRET in (text := path.read_text(errors="replace")) or token in text)]
    assert leaked == []
    # The same bytes as the single-process encoder on this machine.
    local = prep_job(isolated, "process", parse_profile({"executor": "local"}, file="env.toml", section="local"), "local")
    (baseline,) = slurm_toy_flow([local], store)
    assert baseline.status == "ran" and baseline.artifact.cache_key != result.artifact.cache_key
    assert result.artifact.digest == baseline.artifact.digest
    assert result.artifact.metrics["num_tokens"] == baseline.artifact.metrics["num_tokens"] > 0


def test_a_queued_ray_job_is_reattached_not_submitted_again_and_cancels(cluster, store: ArtifactStore,
                                                                          isolated: Path) -> None:  # noqa: ANN001
    env = slurm_env(cluster)
    blocker = sbatch(cluster, "--exclusive", "--time=00:05:00", "--wrap", "sleep 300", cwd=isolated)
    try:
        job = slurm_job(RAY_PRODUCE, job_dir(isolated), container_image=IMAGE)
        prepared = prepare_stage(job, store, {})
        work = Path(prepared.work_url)

        def submit() -> object:
            return submit_and_wait(job, resolved_config=prepared.resolved_yaml, cache_key=prepared.cache_key,
                                   work_dir=str(work), store=store, wandb=None, detached=True, on_line=print)

        first = submit()
        assert not first.reattached and first.state == "PENDING"  # behind the exclusive job
        second = submit()
        assert second.reattached and second.job_id == first.job_id and second.experiment_id == first.experiment_id
        record = store.read_record(prepared.cache_key)
        assert record is not None and record.attempt == 1 and record.job_id == first.job_id
        queued = subprocess.run(["squeue", "-h", "-o", "%i", "-n", f"root-root.{first.experiment_id}"], env=env,
                                capture_output=True, text=True, timeout=30).stdout.split()
        assert queued == [first.job_id], "one Slurm job for the Ray job, however often it is submitted"
        # `nemotron runs status/cancel` find it by its job id and follow it from the record alone.
        found = find_record(store, first.job_id)
        assert job_info(open_experiment(found)).state == "PENDING"
        after = cancel(open_experiment(found))
        assert after.state in {"CANCELLED", "UNKNOWN"}
        assert sacct_row(cluster, first.job_id)["State"].startswith("CANCELLED")
    finally:
        subprocess.run(["scancel", blocker], env=env, timeout=30, check=False)


def test_without_an_image_the_stage_runs_the_launcher_through_an_experiment(cluster, store: ArtifactStore,
                                                                             isolated: Path) -> None:  # noqa: ANN001
    job = slurm_job(RAY_PRODUCE, job_dir(isolated))
    assert not ray_jobs.uses_ray_job(job)
    assert ray_jobs.how_ray_runs(job) == (
        "recipes/nano3/ray_cluster.py on every node; no container_image, and NeMo-Run's ray.sub needs pyxis"
    )
    (result,) = slurm_toy_flow([job], store)
    assert result.status == "ran" and result.artifact.metrics["sum"] == 2 * sum(range(3))
    record = store.read_record(result.artifact.cache_key)
    assert record is not None and record.ray_job is None and record.job_id
    assert sacct_row(cluster, record.job_id) == {"State": "COMPLETED", "ExitCode": "0:0"}

"""`ray` stages on a real Slurm: NeMo-Run's SlurmRayJob with a container image, the launcher without.

This Slurm has no pyxis, so a SlurmRayJob's ray.sub cannot start Ray here (its every srun carries
`--container-*`): what is checked for real is everything up to that point and around it — the
submission through SlurmRayJob (its folder, its ray.sub, the code it ships, the job id recorded
before the wait), the job running on the node (it writes its own job_ids.json there), the wait
following it to its end through SlurmRayJob's status and failing the stage with its log, a rerun
re-attaching to a queued Ray job instead of submitting another, and cancelling it. Without an
image the same stage runs recipes/nano3/ray_cluster.py through an Experiment, and succeeds.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from prefect import flow

from tasks import ray_jobs
from tasks.artifacts import ArtifactStore
from tasks.stage_task import StageFailed, prepare_stage, run_stage
from tasks.submissions import cancel, find_record, job_info, open_experiment
from tasks.submit import submit_and_wait
from tests.infra.slurm_commands import sacct_row, sbatch, slurm_env
from tests.infra.slurm_stages import PRODUCE, slurm_job, slurm_toy_flow

pytestmark = pytest.mark.usefixtures("prefect_api")

#: The toy producer as a `ray` stage (RL and data prep at scale are, on backend megatron).
RAY_PRODUCE = dataclasses.replace(PRODUCE, id="toy/ray-produce", artifact="toy-ray-numbers", launcher="ray")
IMAGE = "nano3-test.sqsh"
SECRET = "hf-token-of-the-ray-job"


@pytest.fixture
def store(isolated: Path) -> ArtifactStore:
    return ArtifactStore(str(isolated / "store"))


def job_dir(isolated: Path) -> Path:
    return isolated / "nemorun" / "experiments"


def test_with_an_image_the_stage_is_a_slurm_ray_job_followed_to_its_end(cluster, store: ArtifactStore,
                                                                         isolated: Path) -> None:  # noqa: ANN001
    job = slurm_job(RAY_PRODUCE, job_dir(isolated), container_image=IMAGE, env_vars={"HF_TOKEN": SECRET})
    assert ray_jobs.uses_ray_job(job)
    prepared = prepare_stage(job, store, {})

    @flow
    def once() -> None:
        run_stage.with_options(retries=0)(prepared, store, None)

    with pytest.raises(StageFailed) as failed:
        once()
    record = store.read_record(prepared.cache_key)
    assert record is not None and record.ray_job == "SlurmRayJob" and record.job_id and record.attempt == 1
    name = ray_jobs.job_name(job, prepared.cache_key, 1)
    assert record.experiment_id == name
    # The executor, saved by NeMo-Run's serializer in its home, readable by the user alone.
    saved = isolated / "nemorun" / "ray_jobs" / name / "executor.json"
    assert saved.stat().st_mode & 0o077 == 0
    folder = job_dir(isolated) / name
    script = (folder / "ray.sub").read_text()
    # NeMo-Run's ray.sub: Ray's head in the image's container, then the stage's script as driver.
    assert f"--container-image={IMAGE} " in script and "--container-name=ray-head" in script
    # The node's whole memory, which ray.sub's steps beside the head's need (the profile sets none).
    assert "\n#SBATCH --mem=0\n" in script
    assert f"python {folder}/code/tests/toy_recipes/produce/produce.py --config " in script
    # The executor's packager's files, shipped by SlurmRayJob into the job folder.
    assert (folder / "code" / "tests" / "toy_recipes" / "produce" / "produce.py").is_file()
    assert (folder / "code" / "recipes" / "nano3" / "runtime.py").is_file()
    # The job ran on the node: ray.sub itself lists its Slurm job id in the folder.
    assert json.loads((folder / "job_ids.json").read_text()) == [record.job_id]
    assert sacct_row(cluster, record.job_id)["State"] == "FAILED"
    # Followed to its end by SlurmRayJob's status; the stage fails with the job's own words.
    message = str(failed.value)
    assert f"job {record.job_id} ended FAILED without a manifest" in message
    assert f"srun: unrecognized option '--container-image={IMAGE}'" in message
    assert not Path(prepared.output_url, "manifest.json").exists()
    # The secret waits for the driver in a 0600 file of the job's folder (ray.sub mounts it), loaded
    # by the driver's command: ray.sub prints each node's environment into its logs.
    secrets = folder / ".secrets.env"
    assert secrets.stat().st_mode & 0o077 == 0 and SECRET in secrets.read_text()
    assert f"set -a; . {secrets}; set +a; rm -f {secrets}; RAY_ADDRESS=auto " in script
    leaked = [path for path in folder.rglob("*") if path.is_file() and path != secrets and SECRET in path.read_text(errors="replace")]
    assert leaked == [] and SECRET not in message


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

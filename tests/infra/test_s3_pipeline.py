"""Artifacts on S3, stages on Slurm: the store is an `s3://` URL on the local S3 server.

The toy stages, then the real tiny pipeline's first four stages (data prep → pretrain → SFT), run
as Slurm jobs through the project's slurm profile, attached and detached (`--batch`). The store's
credentials come from the ArtifactStore block or the [artifacts] settings only (never from this
process's environment), reach the jobs as secret env, and must appear in no file the run leaves
behind nor in its logs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect import flow
from pydantic import SecretStr

from blocks.settings import ArtifactsConfig, WandbConfig
from recipes.nano3 import runtime
from recipes.nano3.manifest import InputRef
from tasks.artifacts import ArtifactError, ArtifactStore, open_store
from tasks.job_config import JobConfig
from tasks.stages import STAGES_BY_ID
from tests.infra.slurm_commands import sacct_row
from tests.infra.slurm_stages import CONSUME, PRODUCE, slurm_job, slurm_profile

#: The tiny pipeline's first stages, sized for a few minutes on 2 CPU cores.
PIPELINE = {
    "data_prep/pretrain": ("corpus.max_bytes=300000", "tokenizer.vocab_size=1024"),
    "data_prep/sft": ("examples=2000",),
    "pretrain": ("train.train_iters=20", "train.save_interval=10", "train.eval_interval=10"),
    "sft": ("train.train_iters=20", "train.save_interval=10", "train.eval_interval=10"),
}


pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(autouse=True)
def s3_user(cluster, monkeypatch: pytest.MonkeyPatch, isolated: Path):  # noqa: ANN001, ANN201
    """The Slurm user, with no S3 credentials of their own: they must come from the store's settings."""
    monkeypatch.setenv(runtime.SCRATCH_VAR, str(isolated / "scratch"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return cluster


@pytest.fixture
def settings(s3_server) -> ArtifactsConfig:  # noqa: ANN001
    """[artifacts] for a fresh prefix of the test bucket."""
    return ArtifactsConfig(
        root=f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}",
        endpoint_url=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key=SecretStr(s3_server.secret_key),
    )


def job_dir(isolated: Path) -> Path:
    return isolated / "nemorun" / "experiments"


def run_flow(jobs: list[JobConfig], settings: ArtifactsConfig | None = None) -> list:
    """The stages in one flow that opens its store inside, as the nano3 flow does: from the given
    [artifacts] settings, else from the ArtifactStore block. Credentials are never a flow parameter."""
    from blocks.profile_lookup import ResolvedProfile, resolve_artifacts
    from flows.pipeline import execute_stages

    @flow
    def s3_stages(jobs: list[JobConfig]) -> list:
        found = settings or resolve_artifacts(None, ResolvedProfile("local-slurm", jobs[0].profile, "block:local-slurm"))
        return execute_stages(jobs, open_store(found), None)

    return s3_stages(jobs)


def bucket_files(store: ArtifactStore) -> dict[str, bytes]:
    """Every object under the store's prefix, by its path below the root."""
    prefix = store._path()
    store.fs.invalidate_cache()
    return {path.removeprefix(prefix).lstrip("/"): store.fs.cat_file(path) for path in store.fs.find(prefix)}


def prefect_logs() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import LogSort

    lines: list[str] = []
    with get_client(sync_client=True) as client:
        while batch := client.read_logs(limit=200, offset=len(lines), sort=LogSort.TIMESTAMP_ASC):
            lines += [log.message for log in batch]
    return "\n".join(lines)


def files_holding(secret: str, *folders: Path) -> list[str]:
    needle = secret.encode()
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    if needle in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    continue
    return found


def assert_secret_nowhere(secret: str, store: ArtifactStore, isolated: Path, cluster) -> None:  # noqa: ANN001
    """Not in the job folders and Slurm logs, the scratch, the cluster's state, the store, Prefect."""
    logs = list(job_dir(isolated).rglob("log-*.out"))
    assert logs, "the jobs left Slurm logs"
    assert not files_holding(secret, isolated, Path(cluster.dir))
    assert not [path for path, data in bucket_files(store).items() if secret.encode() in data]
    text = prefect_logs()
    assert "manifest:" in text, "the jobs' logs reached Prefect"
    assert secret not in text
    # The secrets file the sbatch script sourced is gone.
    assert not list(job_dir(isolated).rglob(".nano3-secrets/*.env"))


def test_toy_stages_publish_to_s3_from_slurm(cluster, settings: ArtifactsConfig, s3_server, isolated: Path,  # noqa: ANN001
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from blocks.profile_blocks import ARTIFACTS_BLOCK, ArtifactStoreSettings

    ArtifactStoreSettings(settings=settings).save(ARTIFACTS_BLOCK, overwrite=True)
    jobs = [slurm_job(PRODUCE, job_dir(isolated)), slurm_job(CONSUME, job_dir(isolated))]
    results = run_flow(jobs)
    assert [r.status for r in results] == ["ran", "ran"]
    assert results[1].artifact.metrics == {"total": 6}  # the consumer read the producer's output from S3

    store = open_store(settings)
    produced, consumed = (r.artifact for r in results)
    objects = bucket_files(store)
    prefix = f"{produced.uri.removeprefix(store.root + '/')}"
    assert {f"{prefix}/numbers.jsonl", f"{prefix}/manifest.json"} <= set(objects)
    assert {f"_registry/{produced.name}/v1.json", f"_registry/{produced.name}/latest.json",
            f"_runs/{produced.cache_key}.json"} <= set(objects)
    assert not [path for path in objects if path.startswith("_work/")], "checkpoints stay on the job's disk"
    assert runtime.latest_checkpoint(Path(store.work_url(jobs[0].stage.slug, produced.cache_key))) is not None

    for version in (produced, consumed):
        resolved = store.resolve(f"{version.name}:latest")
        assert resolved.digest == version.digest and resolved.uri.startswith(settings.root)
        manifest = store.read_manifest(resolved.uri)
        assert manifest is not None and manifest.digest == version.digest
        store.verify(version.name, resolved.uri, manifest)
    record = store.read_record(produced.cache_key)
    assert record is not None and record.executor == "slurm"

    assert_secret_nowhere(s3_server.secret_key, store, isolated, cluster)

    # A corrupted object: the store's check and a job's download both refuse it.
    store.fs.pipe_file(f"{store._path(prefix)}/numbers.jsonl", b'{"n": 666}\n')
    manifest = store.read_manifest(produced.uri)
    assert manifest is not None
    with pytest.raises(ArtifactError, match="numbers.jsonl is corrupted"):
        store.verify(produced.name, produced.uri, manifest)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(runtime.SCRATCH_VAR, str(isolated / "fresh-scratch"))
    ref = InputRef(name=produced.name, version=produced.version, digest=produced.digest, type=produced.type,
                   path=produced.uri)
    with pytest.raises(SystemExit, match="file numbers.jsonl does not match its manifest"):
        runtime.fetch_input("data", ref)
    assert not (isolated / "fresh-scratch" / "inputs" / produced.digest.removeprefix("sha256:")).exists()


def batch_flow(jobs: list[JobConfig], settings: ArtifactsConfig, wandb: WandbConfig) -> list:
    """One `--batch` pass (flows.detached.submit_jobs) in a flow that opens its store inside, as
    the submit flow does: submits what can start and returns without waiting."""
    from flows.detached import submit_jobs

    @flow
    def s3_batch(jobs: list[JobConfig]) -> list:
        return submit_jobs(jobs, open_store(settings), wandb)

    return s3_batch(jobs)


@pytest.mark.timeout(900)
def test_batch_jobs_on_slurm_get_the_store_s_credentials(cluster, settings: ArtifactsConfig, s3_server,  # noqa: ANN001
                                                         isolated: Path) -> None:
    # The user has no S3 credentials (s3_user): a detached job that writes to the store can only
    # have them from the secret env its submission sent.
    wandb = WandbConfig(mode="disabled", api_key=SecretStr(f"wandb-{uuid.uuid4().hex}"))
    jobs = [slurm_job(PRODUCE, job_dir(isolated)), slurm_job(CONSUME, job_dir(isolated))]
    store = open_store(settings)
    ended = {"State": "COMPLETED", "ExitCode": "0:0"}

    first = batch_flow(jobs, settings, wandb)
    assert [s.status for s in first] == ["submitted", "waiting"]
    assert first[1].detail == f"needs {PRODUCE.artifact} from {PRODUCE.id}"
    assert sacct_row(cluster, first[0].job_id, timeout=300) == ended

    # Again once the job ended: the producer is published from S3, the consumer submitted.
    second = batch_flow(jobs, settings, wandb)
    assert [s.status for s in second] == ["done", "submitted"]
    assert second[0].detail == f"{PRODUCE.artifact}:v1"
    assert sacct_row(cluster, second[1].job_id, timeout=300) == ended
    third = batch_flow(jobs, settings, wandb)
    assert [(s.status, s.detail) for s in third] == [("done", f"{PRODUCE.artifact}:v1"), ("done", f"{CONSUME.artifact}:v1")]

    for name in (PRODUCE.artifact, CONSUME.artifact):
        version = store.resolve(f"{name}:latest")
        assert version.version == "v1" and version.uri.startswith(f"{settings.root}/")
        manifest = store.read_manifest(version.uri)
        assert manifest is not None and manifest.digest == version.digest
        store.verify(name, version.uri, manifest)
        submission = store.read_record(version.cache_key)
        assert submission is not None and submission.executor == "slurm" and submission.job_id
    assert store.resolve(f"{CONSUME.artifact}:latest").metrics == {"total": 6}  # read the producer's output from S3

    # The sbatch scripts name what the jobs were sent; the secrets files they sourced are gone.
    scripts = [path.read_text() for path in job_dir(isolated).rglob("*.sh") if "#SBATCH" in path.read_text()]
    assert len(scripts) == 2
    names = "AWS_ACCESS_KEY_ID AWS_ENDPOINT_URL AWS_SECRET_ACCESS_KEY WANDB_API_KEY"
    assert all(f"# loads: {names}" in script for script in scripts)
    assert not list(job_dir(isolated).rglob(".nano3-secrets/*.env"))
    # No secret value in any file written: job folders, sbatch scripts, NeMo-Run's home, the
    # scratch, the cluster's state and logs, the store, Prefect's logs.
    assert list((isolated / "nemorun").rglob("log-*.out")), "the jobs left Slurm logs"
    text = prefect_logs()
    assert "submitting detached through slurm" in text
    for secret in (s3_server.secret_key, wandb.api_key.get_secret_value()):
        assert not files_holding(secret, isolated, Path(cluster.dir))
        assert not [path for path, data in bucket_files(store).items() if secret.encode() in data]
        assert secret not in text


@pytest.mark.timeout(1200)
def test_the_tiny_pipeline_runs_on_slurm_with_its_artifacts_on_s3(cluster, settings: ArtifactsConfig, s3_server,  # noqa: ANN001
                                                                  isolated: Path) -> None:
    jobs = [slurm_job(STAGES_BY_ID[stage], job_dir(isolated), *overrides) for stage, overrides in PIPELINE.items()]
    results = run_flow(jobs, settings)
    assert [r.status for r in results] == ["ran"] * len(PIPELINE)

    store = open_store(settings)
    objects = bucket_files(store)
    for result in results:
        version = store.resolve(f"{result.artifact.name}:latest")
        assert version.uri.startswith(f"{settings.root}/") and version.digest == result.artifact.digest
        manifest = store.read_manifest(version.uri)
        assert manifest is not None
        store.verify(version.name, version.uri, manifest)
        prefix = version.uri.removeprefix(store.root + "/")
        assert {f"{prefix}/{entry.path}" for entry in manifest.files} | {f"{prefix}/manifest.json"} <= set(objects)
    # SFT consumed the pretrained model, the SFT data and the pretraining data it replays, published on S3 by this run.
    sft = results[-1].artifact
    assert {i["name"]: i["digest"] for i in sft.inputs} == {
        "nano3-sft-data": results[1].artifact.digest, "nano3-pretrain-model": results[2].artifact.digest,
        "nano3-pretrain-data": results[0].artifact.digest}
    assert any(path.endswith(".safetensors") for path in objects if path.startswith(sft.uri.removeprefix(store.root + "/")))

    assert_secret_nowhere(s3_server.secret_key, store, isolated, cluster)

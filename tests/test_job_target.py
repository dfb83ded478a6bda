"""One job assembly for every mode: an attached run, a detached one (`--batch`) and the dry-run
build the job's env and secrets with tasks.submission.job_target, so they send the same names.

The submissions stop right where the executor would be built: what is checked is the target each
mode hands to it. The store is an `s3://` one whose credentials must reach the job; nothing here
talks to it.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks.executors import REDACTED, ExecutionTarget
from blocks.profiles import parse_profile
from blocks.settings import WandbConfig
from recipes.nano3 import runtime
from tasks.artifacts import ArtifactStore
from tasks.job_config import JobConfig, build_job_config
from tasks.stages import PROJECT_ROOT, STAGES_BY_ID

ACCESS_KEY = "unit-access-key-id"
SECRET_KEY = "unit-s3-secret-value"
WANDB_KEY = "unit-wandb-key-value"
HF_TOKEN = "unit-hf-token-value"
STORE_AND_WANDB = ("AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY")


class Captured(Exception):
    """Raised instead of building the executor: the submission goes no further."""

    def __init__(self, target: ExecutionTarget) -> None:
        super().__init__("captured")
        self.target = target


@pytest.fixture
def job(isolated: Path) -> JobConfig:
    profile = parse_profile(
        {"executor": "slurm", "tunnel": "local", "account": "acct", "partition": "debug", "batch_partition": "batch",
         "job_dir": str(isolated / "jobs"), "env_vars": {"HF_TOKEN": HF_TOKEN}},
        file="env.toml", section="cluster",
    )
    # A stage without a data source: the store is never contacted.
    return build_job_config(STAGES_BY_ID["data_prep/sft"], "tiny", profile=profile, profile_name="cluster",
                            profile_origin="test")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> ArtifactStore:
    """An s3:// store with credentials, that has no output, no record and is never contacted."""
    monkeypatch.setenv(runtime.SCRATCH_VAR, str(isolated / "scratch"))
    store = ArtifactStore("s3://bucket/prefix", {"key": ACCESS_KEY, "secret": SECRET_KEY,
                                                 "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})
    monkeypatch.setattr(store, "read_record", lambda cache_key: None)
    monkeypatch.setattr(store, "read_manifest", lambda output_url: None)
    return store


@pytest.fixture
def wandb() -> WandbConfig:
    return WandbConfig(project="nano3", mode="disabled", api_key=SecretStr(WANDB_KEY))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Submissions stop at the executor, and log to a plain logger (no Prefect run around them)."""
    import flows.detached
    import tasks.stage_task
    import tasks.submit

    def capture(target: ExecutionTarget) -> None:
        raise Captured(target)

    monkeypatch.setattr(tasks.submit, "build_executor", capture)
    plain = logging.getLogger("test_job_target")
    monkeypatch.setattr(tasks.stage_task, "get_run_logger", lambda: plain)
    monkeypatch.setattr(flows.detached, "get_run_logger", lambda: plain)


def attached_target(job: JobConfig, store: ArtifactStore, wandb: WandbConfig) -> ExecutionTarget:
    from tasks.stage_task import _submit_until_done, prepare_stage

    with pytest.raises(Captured) as stopped:
        _submit_until_done(prepare_stage(job, store, {}), store, wandb)
    return stopped.value.target


def detached_target(job: JobConfig, store: ArtifactStore, wandb: WandbConfig) -> ExecutionTarget:
    from flows.detached import submit_jobs

    with pytest.raises(Captured) as stopped:
        submit_jobs([job], store, wandb)
    return stopped.value.target


@pytest.mark.usefixtures("captured")
def test_attached_and_detached_jobs_get_the_same_secret_env(job: JobConfig, store: ArtifactStore,
                                                           wandb: WandbConfig) -> None:
    from tasks.submission import job_secret_env

    attached = attached_target(job, store, wandb)
    detached = detached_target(job, store, wandb)
    assert (attached.detached, detached.detached) == (False, True)
    assert attached.reveal_secrets and detached.reveal_secrets
    assert attached.secret_env() == detached.secret_env()
    assert attached.secret_env() == {"HF_TOKEN": HF_TOKEN, **job_secret_env(store, wandb)}
    assert {name: attached.secret_env()[name] for name in STORE_AND_WANDB} == {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "WANDB_API_KEY": WANDB_KEY,
    }
    # Only the mode differs: the partition it picks, nothing of the job's env.
    assert attached.extra_secret_env == detached.extra_secret_env
    assert attached.profile == detached.profile and attached.launcher == detached.launcher


@pytest.mark.usefixtures("captured")
@pytest.mark.parametrize("batch", [False, True], ids=["attached", "detached"])
def test_the_dry_run_names_the_env_a_submission_sends(job: JobConfig, store: ArtifactStore, wandb: WandbConfig,
                                                      batch: bool) -> None:
    from blocks.executors import slurm_secret_setup_line
    from tasks.submission import job_target, plan_submission, render_plan

    sent = detached_target(job, store, wandb) if batch else attached_target(job, store, wandb)
    planned = job_target(job, store=store, wandb=wandb, detached=batch, reveal_secrets=False)
    assert planned.secret_env().keys() == sent.secret_env().keys()
    # The store's and W&B's values never reach the planner (the profile's are redacted as the executor is built).
    assert {value for _, value in planned.extra_secret_env} == {REDACTED}

    text = render_plan(plan_submission(job, detached=batch, store=store, wandb=wandb))
    names = " ".join(sorted(sent.secret_env()))
    assert f"# loads: {names}" in text and set(STORE_AND_WANDB) <= set(names.split())
    assert f"#SBATCH --partition={'batch' if batch else 'debug'}" in text
    for secret in (ACCESS_KEY, SECRET_KEY, WANDB_KEY, HF_TOKEN):
        assert secret not in text
    # The line the plan shows is the one the job's sbatch script gets (beside its own secrets file).
    line = slurm_secret_setup_line(sent, "/jobs")
    assert line is not None and line.endswith(f"# loads: {names}")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_imports_point_down_and_the_flows_one_way() -> None:
    """flows → tasks → blocks, and within flows: the pipeline uses the detached submission, never back."""
    assert "flows.detached" in imported_modules(PROJECT_ROOT / "flows" / "pipeline.py")
    assert "flows.pipeline" not in imported_modules(PROJECT_ROOT / "flows" / "detached.py")
    for path in sorted((PROJECT_ROOT / "tasks").rglob("*.py")):
        upward = {m for m in imported_modules(path) if m == "flows" or m.startswith("flows.")}
        assert not upward, f"{path.relative_to(PROJECT_ROOT)} imports {upward}"
    for path in sorted((PROJECT_ROOT / "blocks").rglob("*.py")):
        upward = {m for m in imported_modules(path) if m.split(".")[0] in ("flows", "tasks")}
        assert not upward, f"{path.relative_to(PROJECT_ROOT)} imports {upward}"

"""What NeMo-Run submits for a stage: the script task, the job's target, and the exact submission text.

`job_target` is the one description of a stage's job (executor settings, env vars, secrets, mode)
that a real submission, attached or detached, and the dry-run all build their executor from: a
plan lists exactly the env var names a submission would send.

Planning never sees a secret: the executor is built with every secret already redacted, so
neither the printed plan nor the files NeMo-Run writes while planning can hold one.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from blocks.executors import REDACTED, ExecutionTarget, build_executor, describe, secret_command
from tasks import ray_jobs
from tasks.job_config import JobConfig
from tasks.stages import PROJECT_ROOT, RAY_CLUSTER_SCRIPT
from tasks.thread_stdout import thread_stdout

if TYPE_CHECKING:
    import nemo_run as run

    from blocks.settings import WandbConfig
    from tasks.artifacts import ArtifactStore

#: Where packaged code lands inside a remote job (NeMo-Run's convention for every remote executor).
REMOTE_CODE_DIR = "/nemo_run/code"
#: Process env vars that hold secrets a config could interpolate; never printed.
SECRET_ENV_NAMES = ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "LEPTON_WORKSPACE_TOKEN")
#: Shorter secret values are not searched for in plans: every match would be noise ("1" in "10").
#: Secrets are redacted before NeMo-Run sees them; this pass only guards against leaks.
MIN_SECRET_LENGTH = 4


def code_dir(job: JobConfig) -> str:
    """The project root as the job sees it: this checkout locally, the unpacked package remotely."""
    return str(PROJECT_ROOT) if job.profile.code_in_place else REMOTE_CODE_DIR


def config_path_in_job(job: JobConfig) -> str:
    """Where the resolved config will be: beside the stage's checkpoints, in the store's work
    folder, whose name (the cache key) is known once the inputs are."""
    return f"<store>/_work/{job.stage.slug}/<cache-key>/config.yaml"


def recipe_task(job: JobConfig, config_path: str | None = None) -> run.Script:
    """The NeMo-Run task: `python <recipe script> --config <resolved config>`.

    A `ray` stage that is not a NeMo-Run Ray job (tasks.ray_jobs says where and why) runs one task
    per node, `python ray_cluster.py --nodes N <recipe script> --config …`: the node count is the
    job's own, so the script waits for exactly the nodes the scheduler gave.
    """
    import nemo_run as run

    script = f"{code_dir(job)}/{job.stage.script_relpath}"
    args = ["--config", config_path or config_path_in_job(job)]
    if job.stage.launcher == "ray":
        # The effective profile's node count (the profile's, else the recipe's run.env.nodes);
        # executors without one (local, docker) run on this one machine.
        nodes = getattr(job.profile, "nodes", 1)
        args = ["--nodes", str(nodes), script, *args]
        script = f"{code_dir(job)}/{RAY_CLUSTER_SCRIPT}"
    return run.Script(path=script, args=args, entrypoint="python", env={"PYTHONPATH": code_dir(job)})


def launcher_for(job: JobConfig) -> str | None:
    return "torchrun" if job.stage.launcher == "torchrun" else None


def job_secret_env(store: ArtifactStore | None, wandb: WandbConfig | None) -> dict[str, str]:
    """The secret env vars a stage's job gets beside its profile's: the W&B key of [wandb] and the
    artifact store's credentials (a remote store's, for the recipe's s3fs; none for a folder)."""
    env: dict[str, str] = {}
    if wandb is not None and wandb.api_key is not None:
        env["WANDB_API_KEY"] = wandb.api_key.get_secret_value()
    if store is not None:
        env.update(store.job_secret_env())
    return env


def job_target(
    job: JobConfig,
    *,
    store: ArtifactStore | None,
    wandb: WandbConfig | None,
    detached: bool,
    reveal_secrets: bool = True,
    secrets_file: str | None = None,
) -> ExecutionTarget:
    """How a stage's job is launched, its env and secrets included: the same for an attached run,
    a detached one (`--batch`) and the dry-run of either, which differ only in `detached`.

    Without `reveal_secrets` (planning) the secret env vars keep their names and lose their
    values here, before any executor is built.
    """
    secrets = job_secret_env(store, wandb)
    if not reveal_secrets:
        secrets = dict.fromkeys(secrets, REDACTED)
    return ExecutionTarget(
        job.profile,
        detached=detached,
        launcher=launcher_for(job),
        reveal_secrets=reveal_secrets,
        **({"secrets_file": secrets_file} if secrets_file else {}),
        secrets_by_command=ray_jobs.uses_ray_job(job),
        extra_secret_env=tuple(sorted(secrets.items())),
        profile_name=job.profile_name,
    )


@dataclass(frozen=True)
class SubmissionPlan:
    job: JobConfig
    detached: bool
    #: sbatch script, entrypoint script or command: what would be sent.
    submission: str
    #: The executor NeMo-Run would use, field by field (secrets redacted).
    executor: dict[str, Any]


@contextlib.contextmanager
def _scratch_nemorun_home() -> Iterator[str]:
    """Planning writes NeMo-Run's experiment folders somewhere disposable, not in ~/.nemo_run."""
    from nemo_run.config import get_nemorun_home, set_nemorun_home

    previous = get_nemorun_home()
    with tempfile.TemporaryDirectory(prefix="nano3-plan-") as home:
        set_nemorun_home(home)
        try:
            yield home
        finally:
            set_nemorun_home(previous)


def _submission_text(request: Any) -> str:
    """The request's own rendering where NeMo-Run has one (the sbatch script), else its command."""
    if hasattr(request, "materialize"):
        return request.materialize()
    if hasattr(request, "role_params"):  # local: one Popen per replica
        lines = []
        for replicas in request.role_params.values():
            for replica in replicas:
                lines.append(f"cd {shlex.quote(replica.cwd or '.')}")
                lines.append(shlex.join(replica.args))
        return "\n".join(lines)
    if hasattr(request, "containers"):  # docker
        return "\n".join(
            f"docker run {c.executor.container_image} {shlex.join(c.command)}" for c in request.containers
        )
    if hasattr(request, "cmd"):  # lepton: its own shell expands $NODE_RANK and friends; do not quote
        return " ".join(request.cmd)
    return repr(request)


def plan_submission(
    job: JobConfig, *, detached: bool, store: ArtifactStore | None = None, wandb: WandbConfig | None = None
) -> SubmissionPlan:
    """Dry-run the stage's job through NeMo-Run and capture what it would send.

    Given the run's store and [wandb], the plan names the secret env vars they add to the job
    (the store's credentials, the W&B key), as a submission sends them; never their values.
    """
    from tasks.nemo_run_for_planning import nemo_run_for_plan

    run = nemo_run_for_plan(job.profile.executor)

    ray_job = ray_jobs.uses_ray_job(job)
    secrets_file = ray_jobs.secrets_file(ray_jobs.plan_name(job)) if ray_job else None
    target = job_target(job, store=store, wandb=wandb, detached=detached, reveal_secrets=False, secrets_file=secrets_file)
    executor = build_executor(target)
    view = describe(executor)
    if ray_job:
        text = ray_jobs.plan_text(job, executor, config_path_in_job(job), secret_command(target, executor))
        view = describe(executor)  # with what the Ray job adds (mem, CPUS_PER_WORKER)
        added = job_secret_env(store, wandb)
        text = redact(text, job.profile.secrets() + [added[name] for name in SECRET_ENV_NAMES if name in added])
        return SubmissionPlan(job=job, detached=detached, submission=text, executor=view)
    # Packaging is not part of the submission text, and NeMo-Run's dry-run would really do it
    # (`git archive`, and for Slurm a `mkdir -p <job_dir>/code` on this machine). A passthrough
    # packager marked "symlink from remote" is the one path on which its Slurm dry-run skips both.
    executor.packager = run.Packager(symlink_from_remote_dir=REMOTE_CODE_DIR)
    # NeMo-Run prints an "Entering Experiment" banner to stdout; the plan is our output, not it.
    with _scratch_nemorun_home() as home, thread_stdout(io.StringIO()):
        with run.Experiment(f"nano3-{job.stage.slug}", executor=executor, log_level="ERROR") as exp:
            exp.add(recipe_task(job), name=job.stage.slug)
            exp.dryrun(log=False, delete_exp_dir=True)
            text = _submission_text(exp.jobs[0]._dryrun_info.request)  # NeMo-Run keeps it private
            text = text.replace(exp._id, "<experiment-id>").replace(home, "$NEMORUN_HOME")
    added = job_secret_env(store, wandb)  # only their names reached the planner; this guards against leaks
    text = redact(text, job.profile.secrets() + [added[name] for name in SECRET_ENV_NAMES if name in added])
    return SubmissionPlan(job=job, detached=detached, submission=text, executor=view)


def render_plan(plan: SubmissionPlan) -> str:
    """Human- and diff-friendly: the config the recipe gets, the executor, the submission."""
    header = {
        "stage": plan.job.stage.id,
        "config": str(plan.job.config_file.relative_to(PROJECT_ROOT))
        if plan.job.config_file.is_relative_to(PROJECT_ROOT)
        else str(plan.job.config_file),
        "profile": plan.job.profile_name,
        "profile_origin": plan.job.profile_origin,
        "mode": "detached (--batch)" if plan.detached else "attached (--run)",
    }
    if (ray := ray_jobs.how_ray_runs(plan.job)) is not None:
        header["ray"] = ray
    parts = [
        yaml.safe_dump(header, sort_keys=False).rstrip(),
        f"--- recipe config ({config_path_in_job(plan.job)})",
        plan.job.recipe_yaml().rstrip(),
        "--- code in the cache key (the script and every recipe module it imports)",
        render_key_sources(plan.job),
        "--- where the job's settings come from",
        render_field_sources(plan.job),
        "--- executor",
        yaml.safe_dump(plan.executor, sort_keys=False).rstrip(),
        "--- submission",
        plan.submission.rstrip(),
    ]
    text = "\n".join(parts) + "\n"
    # The recipe config may pull secrets from the environment (${oc.env:...}); the profile holds others.
    return redact(text, plan.job.profile.secrets() + [os.environ.get(n, "") for n in SECRET_ENV_NAMES])


def _field_value(profile: Any, key: str) -> Any:
    top, _, sub = key.partition(".")
    if top == "env_vars" and sub:
        return REDACTED if sub in profile.secret_env() else profile.env_vars.get(sub)
    value = getattr(profile, top, None)
    if isinstance(value, dict) and sub:
        value = value.get(sub)
    if hasattr(value, "get_secret_value"):
        return REDACTED
    return value


def render_key_sources(job: JobConfig) -> str:
    """The files whose change reruns the stage (tasks.cache_key follows the script's imports)."""
    from tasks.cache_key import stage_sources

    return "\n".join(
        str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)
        for path in stage_sources(job.stage)
    )


def render_field_sources(job: JobConfig) -> str:
    """One line per executor field the job sets: its value and who set it (the recipe's run.env,
    a profile section of the extends chain, the command line), then what was assumed."""
    rows = []
    for key, source in job.field_sources:
        if key == "executor" or key == "env_vars":  # env_vars are listed entry by entry
            continue
        value = _field_value(job.profile, key)
        if isinstance(value, dict) and value:
            continue  # a table's entries have their own lines
        rows.append((key, value, source))
    for key, value, why in job.profile.assumed():
        rows.append((key, value if value != "" else None, f"assumed: {why}"))
    if not rows:
        return "(all defaults)"
    from pydantic_core import to_jsonable_python

    shown = [
        (key, yaml.safe_dump(to_jsonable_python(value, by_alias=True), default_flow_style=True, width=1000).strip().removesuffix("...").strip(), source)
        for key, value, source in rows
    ]
    width = max(len(f"{key}: {value}") for key, value, _ in shown)
    return "\n".join(f"{f'{key}: {value}':<{width}}  # {source}" for key, value, source in shown)


def redact(text: str, secrets: list[str]) -> str:
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, REDACTED)
    return text

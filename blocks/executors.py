"""Profile → NeMo-Run executor, tunnel and packager. The only place that builds them.

One builder per executor kind, chosen from a table; each reads top to bottom as the NeMo-Run
call it makes. nemo_run is imported inside the builders: importing it costs seconds and the
CLI's fast paths never need it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

import recipes
from recipes.nano3.runtime import ORCHESTRATOR_PID_VAR

from blocks.errors import ConfigError
from blocks.profiles import (
    NO_ACCOUNT_JOB_PREFIX,
    DGXCloudProfile,
    DockerProfile,
    KubeRayProfile,
    LeptonProfile,
    LocalProfile,
    SkypilotProfile,
    SlurmProfile,
    _Profile,
)

if TYPE_CHECKING:
    import nemo_run as run

#: What a secret looks like in anything we print or write while planning.
REDACTED = "********"
#: Where a Slurm job finds its secret env vars: a 0600 file beside the job, never the sbatch script.
SLURM_SECRETS_FILE = ".nano3-secrets.env"


@dataclass(frozen=True)
class ExecutionTarget:
    """How one job is launched: the profile plus what the stage and the command line decide."""

    profile: _Profile
    detached: bool = False
    #: "torchrun" for multi-process training, None to run the script as it is.
    launcher: str | None = None
    #: False while planning: every secret becomes REDACTED before NeMo-Run ever sees it.
    reveal_secrets: bool = True
    #: Where a Slurm job reads its secret env vars from (a 0600 file written at submission).
    secrets_file: str = ".nano3-secrets/<submission>.env"
    #: The job's command loads that file itself, not the sbatch script's setup: NeMo-Run's ray.sub
    #: prints every node's environment into the job's logs (tasks.ray_jobs).
    secrets_by_command: bool = False
    #: Secret env vars from elsewhere than the profile (the W&B key of [wandb]).
    extra_secret_env: tuple[tuple[str, str], ...] = ()
    #: The profile's name, for errors.
    profile_name: str | None = None

    def secret_env(self) -> dict[str, str]:
        return {**self.profile.secret_env(), **dict(self.extra_secret_env)}


#: The recipe scripts jobs run (they import nothing of ours outside this folder).
RECIPES_DIR = Path(recipes.__file__).resolve().parent


def _secret(value: SecretStr | None, target: ExecutionTarget) -> str | None:
    if value is None:
        return None
    return value.get_secret_value() if target.reveal_secrets else REDACTED


def _env(target: ExecutionTarget, *, with_secrets: bool = True) -> dict[str, str]:
    env = dict(target.profile.env_vars)
    if with_secrets:
        env.update({k: v if target.reveal_secrets else REDACTED for k, v in target.secret_env().items()})
    return env


def build_packager(profile: _Profile) -> run.Packager:
    """recipes (this tool's recipe scripts), git (the repository at HEAD), pattern (matching
    files), hybrid (git and pattern), none (nothing)."""
    import nemo_run as run

    def pattern() -> run.PatternPackager:
        patterns, bases = profile.shipped_patterns(), profile.pattern_base()
        if len(patterns) == 1:
            return run.PatternPackager(include_pattern=patterns[0], relative_path=bases[0])
        return run.PatternPackager(include_pattern=patterns, relative_path=bases)

    def git() -> run.GitArchivePackager:
        return run.GitArchivePackager(
            subpath=profile.subpath,
            include_submodules=profile.include_submodules,
            include_pattern=profile.include_pattern,
        )

    if profile.packager == "none":
        return run.Packager()
    if profile.packager == "recipes":
        # What every job runs, and all it imports of ours, from wherever this tool is installed
        # (a checkout, edits included, or site-packages): no git repository needed in the cwd.
        return run.PatternPackager(include_pattern=str(RECIPES_DIR), relative_path=str(RECIPES_DIR.parent))
    if profile.packager == "git":
        return git()
    if profile.packager == "pattern":
        return pattern()
    # hybrid: the git archive, plus files outside git (data, generated configs) beside it when
    # packager_include_pattern names some (Nemotron configures its hybrid packager in code, so
    # an env.toml section copied from it names none).
    parts: dict[str, run.Packager] = {"code": git()}
    if profile.shipped_patterns():
        parts["extra"] = pattern()
    return run.HybridPackager(sub_packagers=parts, extract_at_root=False)


def build_tunnel(profile: SlurmProfile, target: ExecutionTarget) -> run.LocalTunnel | run.SSHTunnel:
    import nemo_run as run
    from nemo_run.config import get_nemorun_home

    if profile.tunnel == "ssh":
        user, job_dir = profile.ssh_user(), profile.ssh_job_dir()
        if not user:
            raise ConfigError(
                "not set, and neither ~/.ssh/config nor this machine names a user",
                section=target.profile_name or None,
                key="user",
                hint="set user = '<login on the cluster>'",
            )
        _check_job_dir(job_dir, "remote_job_dir", target)
        # NeMo-Run's SSHTunnel asks for a passphrase interactively; a stored one is handed over
        # through the environment of the submitting process only (see submit time), never here.
        return run.SSHTunnel(
            host=profile.host,
            user=user,
            port=profile.port,
            job_dir=job_dir,
            identity=os.path.expanduser(profile.identity) if profile.identity else None,
        )
    # LocalTunnel copies nothing: sbatch must find the script where NeMo-Run wrote it.
    job_dir = profile.job_dir or os.path.join(get_nemorun_home(), "experiments")
    _check_job_dir(job_dir, "job_dir" if profile.job_dir else "NEMORUN_HOME", target)
    return run.LocalTunnel(job_dir=job_dir)


def _check_job_dir(job_dir: str, key: str, target: ExecutionTarget) -> None:
    if "nemo_run" in Path(job_dir).parts:
        # NeMo-Run rewrites `/nemo_run` in a job's paths (its in-container code folder): a job
        # folder below one gets mangled output paths, and sbatch fails with exit 0:53.
        raise ConfigError(
            f"a Slurm job folder cannot lie below a folder named 'nemo_run' ({job_dir})",
            section=target.profile_name or None,
            key=key,
            hint="use another name, e.g. ~/.nemo_run (NeMo-Run's default)",
        )


def _local(target: ExecutionTarget) -> run.Executor:
    import nemo_run as run

    profile: LocalProfile = target.profile  # type: ignore[assignment]
    # Only a stage that trains with torchrun gets nproc_per_node processes; the others run once.
    # One process needs no torchrun: its agent would import torch once more before the job does
    # (about 3 s here per training stage), and the recipes run as one process without it.
    torchrun = target.launcher == "torchrun" and profile.nproc_per_node > 1
    return run.LocalExecutor(
        ntasks_per_node=profile.nproc_per_node if torchrun else 1,
        launcher="torchrun" if torchrun else None,
        # NeMo-Run writes an executor's env_vars into its experiment folder: secrets reach a local
        # job through the environment it inherits from this process instead (see tasks.submit).
        env_vars=_env(target, with_secrets=False),
        packager=build_packager(profile),
    )


def _docker(target: ExecutionTarget) -> run.Executor:
    import nemo_run as run

    profile: DockerProfile = target.profile  # type: ignore[assignment]
    extra = {"network": profile.network} if profile.network else {}
    return run.DockerExecutor(
        container_image=profile.container_image,
        num_gpus=profile.gpus_per_node,
        ntasks_per_node=profile.nproc_per_node,
        runtime=profile.runtime,
        ipc_mode=profile.ipc_mode,
        shm_size=profile.shm_size,
        volumes=[os.path.expanduser(m) for m in profile.mounts],
        env_vars=_env(target),
        packager=build_packager(profile),
        launcher=target.launcher,
        **extra,
    )


def slurm_secrets_path(tunnel_job_dir: str, target: ExecutionTarget) -> str:
    return os.path.join(tunnel_job_dir, target.secrets_file)


def _load_secrets(target: ExecutionTarget, tunnel_job_dir: str) -> str:
    path = shlex.quote(slurm_secrets_path(tunnel_job_dir, target))
    return f"set -a; . {path}; set +a; rm -f {path}"


def slurm_secret_setup_line(target: ExecutionTarget, tunnel_job_dir: str) -> str | None:
    """The sbatch line that loads secret env vars from the 0600 file written at submission."""
    names = sorted(target.secret_env())
    if not names or target.secrets_by_command:
        return None
    # +v as well as +x: sbatch scripts run with `set -evx`, and -v would echo the sourced lines.
    return f"set +vx; {_load_secrets(target, tunnel_job_dir)}  # loads: {' '.join(names)}"


def _slurm_secret_command(target: ExecutionTarget, executor: Any) -> str | None:
    if not target.secret_env() or not target.secrets_by_command:
        return None
    return _load_secrets(target, executor.tunnel.job_dir)


#: executor kind → the shell commands a job's command starts with to load its secret env vars,
#: where they travel as a file (`secrets_by_command`); elsewhere they are the job's env vars.
SECRET_COMMANDS: dict[str, Callable[[ExecutionTarget, Any], str | None]] = {"slurm": _slurm_secret_command}


def secret_command(target: ExecutionTarget, executor: Any) -> str | None:
    """`set -a; . FILE; set +a; rm -f FILE` for a job whose command loads its own secrets."""
    loader = SECRET_COMMANDS.get(target.profile.executor)
    return loader(target, executor) if loader is not None else None


def _slurm(target: ExecutionTarget) -> run.Executor:
    import nemo_run as run

    profile: SlurmProfile = target.profile  # type: ignore[assignment]
    tunnel = build_tunnel(profile, target)
    setup = [profile.setup_lines, *profile.startup_commands, slurm_secret_setup_line(target, tunnel.job_dir)]
    setup = [line for line in setup if line]
    # pyxis flags only when there is an image: plain Slurm rejects --container-* (exit 127).
    container = (
        {"container_image": profile.container_image, "container_mounts": list(profile.mounts)}
        if profile.container_image
        else {}
    )
    optional = {
        name: getattr(profile, name)
        for name in ("cpus_per_task", "mem", "qos", "constraint")
        if getattr(profile, name) is not None
    }
    # A CPU job asks for no GPUs at all: `--gpus-per-node=0` is rejected where no GRES is defined.
    if profile.gpus_per_node:
        optional["gpus_per_node"] = profile.gpus_per_node
    if profile.exclusive:
        optional["exclusive"] = True
    if profile.srun_args:
        optional["srun_args"] = list(profile.srun_args)
    # No account: NeMo-Run writes no --account line, but would name the job after the account.
    if not profile.account:
        optional["job_name_prefix"] = NO_ACCOUNT_JOB_PREFIX
    # torchrun stages: NeMo-Run turns ntasks_per_node into torchrun's --nproc-per-node (one srun
    # task per node); a single-process stage runs once per node, not once per GPU.
    per_gpu = target.launcher == "torchrun"
    return run.SlurmExecutor(
        account=profile.account,
        partition=profile.partition_for(target.detached),
        nodes=profile.nodes,
        ntasks_per_node=profile.ntasks_per_node or ((profile.gpus_per_node or 1) if per_gpu else 1),
        time=profile.time,
        tunnel=tunnel,
        packager=build_packager(profile),
        launcher=target.launcher,
        # Secrets never go into the sbatch script: they are sourced from a file (setup_lines).
        env_vars=_env(target, with_secrets=False),
        setup_lines="\n".join(setup) or None,
        **container,
        **optional,
    )


def _dgxcloud(target: ExecutionTarget) -> run.Executor:
    import nemo_run as run

    profile: DGXCloudProfile = target.profile  # type: ignore[assignment]
    if not profile.pvcs:
        # NeMo-Run stages every job's files in pvc_nemo_run_dir and asserts it lies on a PVC of
        # the workload; no claim name can be guessed.
        top = "/" + profile.pvc_nemo_run_dir.strip("/").split("/")[0]
        raise ConfigError(
            f"is empty, but the job's files go to pvc_nemo_run_dir ({profile.pvc_nemo_run_dir}), "
            "which must lie on one of the workload's PVCs",
            section=target.profile_name or None,
            key="pvcs",
            hint=f'add e.g. pvcs = [{{ claimName = "<your-claim>", path = "{top}" }}]',
        )
    return run.DGXCloudExecutor(
        base_url=profile.base_url,
        # Required by NeMo-Run's dataclass, never used by it: the API is reached through base_url.
        kube_apiserver_url=profile.kube_apiserver_url or "",
        client_id=profile.client_id,
        client_secret=_secret(profile.client_secret, target),
        project_name=profile.project_name,
        container_image=profile.container_image,
        pvc_nemo_run_dir=profile.pvc_nemo_run_dir,
        nodes=profile.nodes,
        gpus_per_node=profile.gpus_per_node,
        nprocs_per_node=profile.nprocs_per_node,
        pvcs=[dict(p) for p in profile.pvcs],
        distributed_framework=profile.distributed_framework,
        custom_spec=dict(profile.custom_spec),
        env_vars=_env(target),
        packager=build_packager(profile),
        launcher=target.launcher,
    )


def _lepton(target: ExecutionTarget) -> run.Executor:
    import nemo_run as run

    profile: LeptonProfile = target.profile  # type: ignore[assignment]
    mounts = [
        {"path": m.path, "mount_path": m.mount_path, **({"from": m.from_} if m.from_ else {})} for m in profile.mounts
    ]
    return run.LeptonExecutor(
        container_image=profile.container_image,
        nemo_run_dir=profile.nemo_run_dir,
        nodes=profile.nodes,
        gpus_per_node=profile.gpus_per_node,
        nprocs_per_node=profile.nprocs_per_node,
        shared_memory_size=profile.shared_memory_size,
        resource_shape=profile.resource_shape,
        node_group=profile.node_group,
        node_reservation=profile.node_reservation,
        mounts=mounts,
        image_pull_secrets=list(profile.image_pull_secrets),
        ray_version=profile.ray_version,
        custom_spec=dict(profile.custom_spec),
        pre_launch_commands=[*profile.startup_commands, *profile.pre_launch_commands],
        env_vars=_env(target),
        packager=build_packager(profile),
        launcher=target.launcher,
    )


def _require(module: str, executor: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"executor '{executor}' needs the '{module}' package, which is not installed",
            key="executor",
            hint=f"pip install {install}",
        )


def _skypilot(target: ExecutionTarget) -> run.Executor:
    _require("sky", "skypilot", "'skypilot[all]'")
    import nemo_run as run

    profile: SkypilotProfile = target.profile  # type: ignore[assignment]
    return run.SkypilotExecutor(
        container_image=profile.container_image,
        cloud=profile.cloud,
        region=profile.region,
        zone=profile.zone,
        gpus=profile.gpus,
        gpus_per_node=profile.gpus_per_node,
        cpus=profile.cpus,
        memory=profile.memory,
        instance_type=profile.instance_type,
        num_nodes=profile.nodes,
        use_spot=profile.use_spot,
        disk_size=profile.disk_size,
        cluster_name=profile.cluster_name,
        setup=profile.setup,
        env_vars=_env(target),
        packager=build_packager(profile),
        launcher=target.launcher,
    )


def _kuberay(target: ExecutionTarget) -> run.Executor:
    _require("kubernetes", "kuberay", "kubernetes")
    from nemo_run.core.execution.kuberay import KubeRayExecutor, KubeRayWorkerGroup

    profile: KubeRayProfile = target.profile  # type: ignore[assignment]
    head = {k: v for k, v in (("head_cpu", profile.head_cpu), ("head_memory", profile.head_memory)) if v}
    return KubeRayExecutor(
        namespace=profile.namespace,
        image=profile.image,
        ray_version=profile.ray_version,
        **head,
        worker_groups=[
            KubeRayWorkerGroup(group_name="workers", replicas=profile.workers, gpus_per_worker=profile.gpus_per_worker)
        ],
        env_vars=_env(target),
        packager=build_packager(profile),
    )


#: executor kind → builder. Adding an executor means one model in blocks.profiles and one row here.
BUILDERS: dict[str, Callable[[ExecutionTarget], Any]] = {
    "local": _local,
    "docker": _docker,
    "slurm": _slurm,
    "dgxcloud": _dgxcloud,
    "lepton": _lepton,
    "skypilot": _skypilot,
    "kuberay": _kuberay,
}


#: Executors whose jobs can run `startup_commands` (as sbatch setup lines, Lepton pre-launch commands).
STARTUP_COMMANDS = ("slurm", "lepton")


def build_executor(target: ExecutionTarget) -> run.Executor:
    kind = target.profile.executor
    if target.profile.startup_commands and kind not in STARTUP_COMMANDS:
        raise ConfigError(
            f"startup_commands is not supported by executor '{kind}'",
            section=target.profile_name,
            key="startup_commands",
            hint=f"supported by: {', '.join(STARTUP_COMMANDS)}",
        )
    try:
        return BUILDERS[kind](target)
    except ConfigError as exc:
        exc.section = exc.section or target.profile_name
        raise ConfigError(exc.message, file=exc.file, section=exc.section, key=exc.key, hint=exc.hint) from None


def describe(obj: Any) -> Any:
    """A plain, stable view of a NeMo-Run object (executor, tunnel, packager) for plans and golden files."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        view: dict[str, Any] = {"class": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if not f.init or f.name.startswith("_"):
                continue
            view[f.name] = describe(getattr(obj, f.name))
        return view
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


# --- What a submission needs before NeMo-Run talks to the scheduler, per executor -------------


def _prepare_local(executor: Any, target: ExecutionTarget) -> None:
    """Local jobs inherit this process's environment.

    - They run `python` and `torchrun` from PATH: make those this environment's, which has the
      recipes' libraries, even when the user did not activate it.
    - They watch this process (recipes.nano3.runtime.watch_orchestrator) and stop when it dies.
    - They get their secret env vars from it: NeMo-Run would write an executor's env_vars into
      its experiment folder in clear.
    """
    os.environ.update(target.secret_env())
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, path])
    os.environ[ORCHESTRATOR_PID_VAR] = str(os.getpid())


def _prepare_slurm(executor: Any, target: ExecutionTarget) -> None:
    """- SSH with a passphrase-protected key: open the session ourselves, so NeMo-Run finds it
      connected and never prompts.
    - Secret env vars go to a 0600 file in the job folder that the sbatch script sources and
      deletes; the script itself never holds them.
    """
    profile: SlurmProfile = target.profile  # type: ignore[assignment]
    tunnel = executor.tunnel
    if profile.tunnel == "ssh" and profile.identity_passphrase is not None:
        from fabric import Connection

        tunnel.session = Connection(
            profile.host,
            user=tunnel.user,
            port=profile.port,
            connect_kwargs={
                "key_filename": [tunnel.identity] if tunnel.identity else [],
                "passphrase": profile.identity_passphrase.get_secret_value(),
            },
        )
        tunnel.session.open()
    secrets = target.secret_env()
    if secrets:
        _ship_secrets(tunnel, slurm_secrets_path(tunnel.job_dir, target), secrets, remote=profile.tunnel == "ssh")


def _ship_secrets(tunnel: Any, path: str, secrets: dict[str, str], *, remote: bool) -> None:
    text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(secrets.items()))
    ship_private_file(tunnel, path, text, remote=remote)


def ship_private_file(tunnel: Any, path: str, text: str, *, remote: bool) -> None:
    """Put `text` at `path` on the cluster side of the tunnel, readable by the user alone (0600,
    its folder 0700 when made here): never written anywhere else readable on the way."""
    with tempfile.NamedTemporaryFile("w", delete=False, prefix="nano3-secrets-") as handle:
        os.chmod(handle.name, 0o600)
        handle.write(text)
    try:
        if remote:
            tunnel.run(f"mkdir -p {shlex.quote(os.path.dirname(path))} && chmod 700 {shlex.quote(os.path.dirname(path))}")
            tunnel.put(handle.name, path)
            tunnel.run(f"chmod 600 {shlex.quote(path)}")
        else:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.replace(handle.name, path)
            os.chmod(path, 0o600)
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)


def _prepare_lepton(executor: Any, target: ExecutionTarget) -> None:
    """The workspace credentials of the profile, for the Lepton client of this process."""
    profile: LeptonProfile = target.profile  # type: ignore[assignment]
    for name, value in (
        ("LEPTON_WORKSPACE_ID", profile.workspace_id),
        ("LEPTON_WORKSPACE_URL", profile.workspace_url),
        ("LEPTON_WORKSPACE_TOKEN", profile.token.get_secret_value() if profile.token else None),
    ):
        if value:
            os.environ[name] = value


#: executor kind → what to do between building the executor and submitting through it.
PREPARERS: dict[str, Callable[[Any, ExecutionTarget], None]] = {
    "local": _prepare_local,
    "slurm": _prepare_slurm,
    "lepton": _prepare_lepton,
}


def prepare_submission(executor: Any, target: ExecutionTarget) -> None:
    """Credentials, secrets and environment a submission needs, the executor's own way."""
    preparer = PREPARERS.get(target.profile.executor)
    if preparer is not None:
        preparer(executor, target)


def slurm_accounted_state(tunnel: Any, job_id: str, *, tries: int = 5) -> str | None:
    """The job's state in Slurm's accounting (`sacct -X`: COMPLETED, TIMEOUT, CANCELLED…), over
    the executor's tunnel; None if sacct lists no row in `tries` questions a second apart (right
    after a job ends it may not list it for a second or two)."""
    for attempt in range(tries):
        if attempt:
            time.sleep(1)
        result = tunnel.run(f"sacct --noheader --parsable2 -X --format=State -j {shlex.quote(job_id)}", warn=True, in_stream=False)
        words = (result.stdout or "").split()
        if words:
            return words[0]
    return None


def _slurm_end_state(exp: Any, job_id: str) -> str | None:
    tunnel = getattr(exp.jobs[0].executor, "tunnel", None) if exp.jobs else None
    return slurm_accounted_state(tunnel, job_id) if tunnel is not None else None


#: executor kind → the scheduler's own word for how a job ended, where NeMo-Run folds it away.
END_STATES: dict[str, Callable[[Any, str], str | None]] = {"slurm": _slurm_end_state}


def scheduler_end_state(profile: _Profile, exp: Any, job_id: str | None) -> str | None:
    """How the scheduler says the job ended (Slurm: TIMEOUT, PREEMPTED, NODE_FAIL…), which
    NeMo-Run reports as FAILED: a job stopped by its time limit made progress and is
    resubmitted, not retried. None where the executor has no finer word."""
    reader = END_STATES.get(profile.executor)
    return reader(exp, job_id) if reader is not None and job_id else None

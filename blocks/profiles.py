"""Execution profiles as typed models, one per executor.

Field names are the seeds' env.toml keys, so an existing env.toml validates unchanged; the
model is what both the file and the Prefect block hold. Secrets are SecretStr: they print as
`**********` and a block stores them encrypted.
"""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    Secret,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from blocks.errors import ConfigError, did_you_mean

#: Env var names whose values are secrets (the seeds' rule): they move to `secret_env_vars`.
SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)

#: A value filled in for a key the profile leaves unset: (key, value used, why).
Assumption = tuple[str, str, str]

#: Where an SSH-tunnelled Slurm job lives when `remote_job_dir` is unset: NeMo-Run's own
#: `~/.nemo_run/experiments`, under the user's home on the cluster. Slurm and pyxis need an
#: absolute path and a plan cannot ask the cluster, so the home is taken to be /home/<user>
#: (/root for root).
DEFAULT_REMOTE_JOB_SUBDIR = ".nemo_run/experiments"
#: Slurm job names when there is no account for NeMo-Run's `<account>-<account>.` prefix.
NO_ACCOUNT_JOB_PREFIX = "nano3."


def remote_home(user: str) -> str:
    """The home folder a Linux cluster gives `user` by convention."""
    return "/root" if user == "root" else f"/home/{user}"


class FieldProblem(Exception):
    """Raised by cross-field validators so the error names the field, not just the profile.

    Not a ValueError on purpose: pydantic lets it through untouched and `parse_profile` adds
    the file and section.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


PackagerKind = Literal["recipes", "git", "pattern", "hybrid", "none"]


class SecretEnvVars(Secret[dict[str, Any]]):
    """A table of secret values, shown as one masked value. Prefect's SecretDict, without
    importing Prefect to parse a profile (seconds of every dry-run, docs/performance.md): its
    block marks every value under it secret (blocks/profile_blocks.py), as under a SecretDict."""


class _Profile(BaseModel):
    """Keys every executor understands."""

    # coerce_numbers_to_str: `mem = 0` or `run.env.mem=0` means "0", as sbatch reads it.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True, coerce_numbers_to_str=True)

    executor: str
    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment of the job.")
    # A block obscures every value under it (a dict of SecretStr it does not).
    secret_env_vars: SecretEnvVars = Field(
        default_factory=lambda: SecretEnvVars({}),
        description="Env vars whose names look secret (KEY, TOKEN, SECRET, PASSWORD, CREDENTIAL); "
        "filled from `env_vars` automatically.",
    )
    startup_commands: list[str] = Field(default_factory=list, description="Shell lines run before the recipe.")
    packager: PackagerKind = Field(
        "recipes", description="How code reaches the job: recipes | git | pattern | hybrid | none."
    )
    subpath: str = Field("", description="git packager: ship only this subfolder of the repository.")
    include_submodules: bool = Field(True, description="git packager: include git submodules.")
    include_pattern: str | list[str] = Field(
        "", description="git: extra untracked files to add; pattern: the files to ship."
    )
    relative_path: str | list[str] = Field("", description="pattern packager: paths are taken relative to this.")
    packager_include_pattern: str | list[str] = Field(
        "", description="hybrid packager: files shipped beside the git archive."
    )

    #: What `executor = "..."` this model answers to.
    kind: ClassVar[str]
    #: Whether a job on this executor needs a container image (the profile's or the recipe's).
    needs_image: ClassVar[bool] = False
    #: Whether its jobs go on after the command that submitted them ends (a scheduler's do; this
    #: machine's are children of the command): detached runs, re-attaching and cancelling need it.
    job_outlives_submitter: ClassVar[bool] = True
    #: Whether its jobs run this checkout's code where it is, instead of a packaged copy.
    code_in_place: ClassVar[bool] = False
    #: Whether its jobs share this machine's cores (so with each other), not an allocation of their own.
    shares_this_machine: ClassVar[bool] = False
    #: NeMo-Run's Ray job class for this executor that runs `ray` stages (tasks.ray_jobs), if any.
    ray_job: ClassVar[str | None] = None
    #: Why a `ray` stage cannot be one of NeMo-Run's Ray jobs here, so runs
    #: recipes/nano3/ray_cluster.py on every node instead.
    ray_job_gap_reason: ClassVar[str] = "NeMo-Run has no Ray job this executor can run"

    def ray_job_gap(self) -> str | None:
        """None where NeMo-Run's Ray job for this executor can run a `ray` stage, else why not."""
        return None if self.ray_job else self.ray_job_gap_reason

    @model_validator(mode="before")
    @classmethod
    def _split_secret_env(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("env_vars"), dict):
            env = dict(data["env_vars"])
            given = data.get("secret_env_vars") or {}
            secrets = dict(given.get_secret_value() if isinstance(given, Secret) else given)
            for name in [n for n in env if SECRET_ENV_NAME.search(n)]:
                secrets[name] = env.pop(name)
            data = {**data, "env_vars": env, "secret_env_vars": secrets}
        return data

    @model_validator(mode="after")
    def _packager_has_what_it_needs(self) -> _Profile:
        if self.packager == "pattern":
            if not self.include_pattern and not self.packager_include_pattern:
                raise FieldProblem(
                    "packager_include_pattern", "packager = 'pattern' needs the files to ship (or 'include_pattern')"
                )
            if self.include_pattern and self.packager_include_pattern and self.include_pattern != self.packager_include_pattern:
                raise FieldProblem(
                    "packager_include_pattern",
                    "packager = 'pattern' takes its files from one key; 'include_pattern' is set too",
                )
        patterns = self.shipped_patterns()
        if patterns and isinstance(self.relative_path, list) and len(self.relative_path) != len(patterns):
            raise FieldProblem(
                "relative_path", f"has {len(self.relative_path)} entries for {len(patterns)} pattern(s); give one per pattern"
            )
        return self

    @field_validator("env_vars", mode="before")
    @classmethod
    def _env_values_are_strings(cls, value: Any) -> Any:
        # TOML gives ints/bools; the process environment only holds strings.
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value

    def secret_env(self) -> dict[str, str]:
        return dict(self.secret_env_vars.get_secret_value())

    def shipped_patterns(self) -> list[str]:
        """The patterns of the pattern part of the packager (`pattern`, or `hybrid`'s extras).

        `pattern` reads `packager_include_pattern`, Nemotron's spelling, or `include_pattern`.
        """
        if self.packager == "pattern":
            value = self.packager_include_pattern or self.include_pattern
        elif self.packager == "hybrid":
            value = self.packager_include_pattern
        else:
            return []
        return [value] if isinstance(value, str) and value else list(value) if isinstance(value, list) else []

    def pattern_base(self) -> list[str]:
        """`relative_path`, one entry per pattern as NeMo-Run's PatternPackager requires; unset,
        the folder the command runs in (NeMo-Run cannot take a relative path from "")."""
        patterns = self.shipped_patterns()
        if isinstance(self.relative_path, list):
            return list(self.relative_path)
        return [self.relative_path or os.getcwd()] * len(patterns)

    def assumed(self) -> list[Assumption]:
        """What was filled in for keys this profile leaves unset, as (key, value used, why).

        Data only: a plan prints it, so no default reaches a cluster unexplained.
        """
        found: list[Assumption] = []
        if self.packager == "hybrid" and not self.packager_include_pattern:
            found.append(("packager_include_pattern", "", "not set; packager = 'hybrid' ships the git archive alone"))
        if self.shipped_patterns() and not self.relative_path:
            found.append(
                ("relative_path", os.getcwd(), "not set; the pattern's paths are taken relative to the folder the command runs in")
            )
        return found

    def secrets(self) -> list[str]:
        """Every secret value this profile carries, for redaction of anything we print."""
        found: list[str] = []

        def walk(value: Any, secret: bool = False) -> None:
            if isinstance(value, (SecretStr, Secret)):
                walk(value.get_secret_value(), secret=True)
            elif isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(getattr(value, name), secret)
            elif isinstance(value, dict):
                for item in value.values():
                    walk(item, secret)
            elif isinstance(value, list):
                for item in value:
                    walk(item, secret)
            elif secret and isinstance(value, str) and value:
                found.append(value)

        walk(self)
        return found


class _ContainerFields(BaseModel):
    container_image: str | None = Field(
        None,
        validation_alias=AliasChoices("container_image", "container"),
        description="Image the job runs in (`container` is accepted as the seeds' older name).",
    )


class LocalProfile(_Profile):
    """This machine. torchrun starts `nproc_per_node` processes when it is above 1."""

    kind: ClassVar[str] = "local"
    ray_job_gap_reason: ClassVar[str] = "one machine: the script starts Ray itself"
    job_outlives_submitter: ClassVar[bool] = False
    code_in_place: ClassVar[bool] = True
    shares_this_machine: ClassVar[bool] = True
    executor: Literal["local"] = "local"
    packager: PackagerKind = "none"
    nproc_per_node: int = Field(1, ge=1, validation_alias=AliasChoices("nproc_per_node", "ntasks_per_node"))


class DockerProfile(_Profile, _ContainerFields):
    kind: ClassVar[str] = "docker"
    ray_job_gap_reason: ClassVar[str] = "one machine: the script starts Ray itself"
    shares_this_machine: ClassVar[bool] = True
    executor: Literal["docker"] = "docker"
    container_image: str | None = Field(
        None,
        validation_alias=AliasChoices("container_image", "container"),
        description="Image the job runs in; unset, each stage's recipe run.env names it.",
    )
    #: A job cannot start without an image: the merged job must have one (tasks.job_config).
    needs_image: ClassVar[bool] = True
    gpus_per_node: int | None = Field(None, description="-1 means every GPU of the host.")
    nproc_per_node: int = Field(1, ge=1, validation_alias=AliasChoices("nproc_per_node", "ntasks_per_node"))
    runtime: str | None = "nvidia"
    ipc_mode: str | None = None
    shm_size: str | None = None
    network: str | None = None
    mounts: list[str] = Field(default_factory=list, description="host:container volume strings.")


class SSHTunnelFields(BaseModel):
    tunnel: Literal["local", "ssh"] = Field("local", description="`ssh` submits through a login node.")
    host: str | None = None
    user: str | None = Field(None, description="Login on the cluster; unset, whom ssh would log in as.")
    port: int | None = None
    identity: str | None = Field(None, description="Private key file for the ssh tunnel.")
    identity_passphrase: SecretStr | None = Field(None, description="Passphrase of `identity`, if it has one.")
    remote_job_dir: str | None = Field(
        None, description="Job folder on the cluster; unset, ~/.nemo_run/experiments in /home/<user> there."
    )


class SlurmProfile(_Profile, _ContainerFields, SSHTunnelFields):
    kind: ClassVar[str] = "slurm"
    ray_job: ClassVar[str | None] = "SlurmRayJob"

    def ray_job_gap(self) -> str | None:
        """NeMo-Run's ray.sub (SlurmRayJob) gives every srun pyxis's --container-* options: a
        Slurm without pyxis rejects them ("srun: unrecognized option") before Ray starts."""
        return None if self.container_image else "no container_image, and NeMo-Run's ray.sub needs pyxis"

    executor: Literal["slurm"] = "slurm"
    account: str | None = Field(None, description="Unset, no --account: Slurm charges the user's default account.")
    partition: str | None = None
    run_partition: str | None = Field(None, description="Partition for attached runs (--run).")
    batch_partition: str | None = Field(None, description="Partition for detached runs (--batch).")
    nodes: int = Field(1, ge=1)
    ntasks_per_node: int | None = Field(None, ge=1, description="Defaults to gpus_per_node, else 1.")
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    time: str = "04:00:00"
    mem: str | None = None
    exclusive: bool | None = None
    qos: str | None = None
    constraint: str | None = None
    mounts: list[str] = Field(default_factory=list, description="host:container mounts (with container_image).")
    setup_lines: str | None = None
    srun_args: list[str] = Field(default_factory=list)
    job_dir: str | None = Field(None, description="Local job folder when tunnel=local (default under NEMORUN_HOME).")
    # Nemotron's container-build keys: accepted so its env.toml files load; no stage here builds images.
    build_partition: str | None = Field(None, description="Accepted for Nemotron env.toml files; not used.")
    build_time: str | None = Field(None, description="Accepted for Nemotron env.toml files; not used.")
    build_cache_dir: str | None = Field(None, description="Accepted for Nemotron env.toml files; not used.")

    @model_validator(mode="after")
    def _ssh_needs_host(self) -> SlurmProfile:
        # The only key with no sensible default: which login node to reach.
        if self.tunnel == "ssh" and not self.host:
            raise FieldProblem("host", "required when tunnel = 'ssh'")
        return self

    def _ssh_user(self) -> tuple[str | None, str]:
        """(login, where it came from): `user`, else what ssh itself would use for `host`."""
        if self.user:
            return self.user, "set"
        configured = _ssh_config_user(self.host or "")
        if configured:
            return configured, f"not set; the User that ~/.ssh/config gives {self.host}"
        try:
            return getpass.getuser(), "not set; the local user name, as ssh uses without a User in ~/.ssh/config"
        except (KeyError, OSError):
            return None, "not set, and neither ~/.ssh/config nor this machine names a user"

    def ssh_user(self) -> str | None:
        """The login for tunnel=ssh; None when nothing names one."""
        return self._ssh_user()[0]

    def ssh_job_dir(self) -> str | None:
        """The job folder on the cluster for tunnel=ssh; None when no user is known to place it."""
        if self.remote_job_dir:
            return self.remote_job_dir
        user = self.ssh_user()
        return f"{remote_home(user)}/{DEFAULT_REMOTE_JOB_SUBDIR}" if user else None

    def assumed(self) -> list[Assumption]:
        found = super().assumed()
        if not self.account:
            found.append(
                (
                    "account",
                    "",
                    "not set; the sbatch script has no --account line, so Slurm charges the user's default "
                    f"account, and jobs are named {NO_ACCOUNT_JOB_PREFIX}<stage>",
                )
            )
        if self.tunnel == "ssh":
            user, why = self._ssh_user()
            if not self.user:
                found.append(("user", user or "", why))
            if not self.remote_job_dir:
                found.append(
                    (
                        "remote_job_dir",
                        self.ssh_job_dir() or "",
                        "not set; tunnel = 'ssh' needs a job folder on the cluster: NeMo-Run's "
                        "~/.nemo_run/experiments, taking the home there to be /home/<user>",
                    )
                )
        for name in ("build_partition", "build_time", "build_cache_dir"):
            if getattr(self, name):
                found.append((name, "", "set, but not used: no stage here builds a container"))
        return found

    def partition_for(self, detached: bool) -> str | None:
        """`batch_partition` for --batch, `run_partition` for --run, `partition` otherwise."""
        preferred = self.batch_partition if detached else self.run_partition
        return preferred or self.partition


class DGXCloudProfile(_Profile, _ContainerFields):
    kind: ClassVar[str] = "dgxcloud"
    ray_job: ClassVar[str | None] = "DGXCloudRayJob"

    def ray_job_gap(self) -> str | None:
        """NeMo-Run asks for a one-node workload's state at /workloads/trainings, where a
        DGXCloudRayJob (always a distributed workload) is not: one node starts Ray in the script."""
        return None if self.nodes > 1 else "one node: the script starts Ray itself"
    executor: Literal["dgxcloud"] = "dgxcloud"
    base_url: str
    kube_apiserver_url: str | None = Field(
        None, description="NeMo-Run's executor requires the field but talks to base_url only; unset, ''."
    )
    client_id: str = Field(validation_alias=AliasChoices("client_id", "app_id"))
    client_secret: SecretStr = Field(validation_alias=AliasChoices("client_secret", "app_secret"))
    project_name: str
    container_image: str | None = Field(
        None,
        validation_alias=AliasChoices("container_image", "container"),
        description="Image the job runs in; unset, each stage's recipe run.env names it.",
    )
    #: A job cannot start without an image: the merged job must have one (tasks.job_config).
    needs_image: ClassVar[bool] = True
    pvc_nemo_run_dir: str
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    nprocs_per_node: int = Field(1, ge=1, validation_alias=AliasChoices("nprocs_per_node", "ntasks_per_node"))
    pvcs: list[dict[str, Any]] = Field(default_factory=list)
    distributed_framework: str = "PyTorch"
    custom_spec: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _run_dir_on_a_pvc(self) -> DGXCloudProfile:
        # NeMo-Run asserts this only at submission; saying it at load time names the key. No
        # pvcs at all may still be filled in by a recipe's run.env: that is checked when the
        # executor is built.
        if self.pvcs and not any(self.pvc_nemo_run_dir.startswith(str(p.get("path", "")).rstrip("/") + "/") or
                   self.pvc_nemo_run_dir == p.get("path") for p in self.pvcs):
            raise FieldProblem("pvc_nemo_run_dir", "is not under the 'path' of any entry in 'pvcs'")
        return self

    def assumed(self) -> list[Assumption]:
        found = super().assumed()
        if not self.kube_apiserver_url:
            found.append(
                (
                    "kube_apiserver_url",
                    "",
                    "not set; NeMo-Run's DGX Cloud executor requires the field but submits, watches and "
                    "cancels jobs through base_url only",
                )
            )
        return found


class LeptonMount(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    path: str
    mount_path: str
    from_: str | None = Field(None, alias="from")


class LeptonProfile(_Profile, _ContainerFields):
    kind: ClassVar[str] = "lepton"
    # LeptonRayJob creates a RayCluster of the executor's nodes when none of its name exists,
    # submits through Ray's job API, and never deletes it: the nodes stay held after the stage.
    ray_job_gap_reason: ClassVar[str] = "LeptonRayJob leaves its RayCluster running"
    executor: Literal["lepton"] = "lepton"
    container_image: str | None = Field(
        None,
        validation_alias=AliasChoices("container_image", "container"),
        description="Image the job runs in; unset, each stage's recipe run.env names it.",
    )
    #: A job cannot start without an image: the merged job must have one (tasks.job_config).
    needs_image: ClassVar[bool] = True
    nemo_run_dir: str
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    nprocs_per_node: int = Field(1, ge=1, validation_alias=AliasChoices("nprocs_per_node", "ntasks_per_node"))
    resource_shape: str = ""
    node_group: str = ""
    node_reservation: str = ""
    shared_memory_size: int = 65536
    mounts: list[LeptonMount] = Field(default_factory=list)
    image_pull_secrets: list[str] = Field(default_factory=list)
    ray_version: str | None = None
    custom_spec: dict[str, Any] = Field(default_factory=dict)
    pre_launch_commands: list[str] = Field(default_factory=list)
    workspace_id: str | None = Field(None, description="Lepton workspace (else LEPTON_WORKSPACE_ID or `lep login`).")
    workspace_url: str | None = None
    token: SecretStr | None = Field(None, description="Workspace token (else LEPTON_WORKSPACE_TOKEN or `lep login`).")


class SkypilotProfile(_Profile, _ContainerFields):
    kind: ClassVar[str] = "skypilot"
    executor: Literal["skypilot"] = "skypilot"
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    gpus: str | None = Field(None, description="Accelerator type, e.g. H100.")
    gpus_per_node: int | None = None
    cpus: int | None = None
    memory: int | None = None
    instance_type: str | None = None
    nodes: int = Field(1, ge=1)
    use_spot: bool | None = None
    disk_size: int | None = None
    cluster_name: str | None = None
    setup: str | None = None


class KubeRayProfile(_Profile):
    kind: ClassVar[str] = "kuberay"
    executor: Literal["kuberay"] = "kuberay"
    namespace: str = "default"
    image: str = ""
    ray_version: str = "2.43.0"
    head_cpu: str | None = None
    head_memory: str | None = None
    workers: int = Field(1, ge=1, description="Replicas of the single worker group.")
    gpus_per_worker: int | None = None


def _ssh_config_user(host: str) -> str | None:
    """The `User` ~/.ssh/config sets for `host`, as ssh (and NeMo-Run's connection) would use it."""
    path = Path("~/.ssh/config").expanduser()
    if not host or not path.is_file():
        return None
    from paramiko import SSHConfig
    from paramiko.ssh_exception import ConfigParseError, CouldNotCanonicalize

    try:
        return SSHConfig.from_path(str(path)).lookup(host).get("user")
    except (OSError, ValueError, ConfigParseError, CouldNotCanonicalize):
        # ssh would report a broken file at connection time; here it just names no user.
        return None


PROFILE_TYPES: dict[str, type[_Profile]] = {
    cls.kind: cls
    for cls in (LocalProfile, DockerProfile, SlurmProfile, DGXCloudProfile, LeptonProfile, SkypilotProfile, KubeRayProfile)
}

Profile = Annotated[
    Union[LocalProfile, DockerProfile, SlurmProfile, DGXCloudProfile, LeptonProfile, SkypilotProfile, KubeRayProfile],
    Field(discriminator="executor"),
]
_PROFILE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Profile)


def accepted_keys(cls: type[BaseModel]) -> set[str]:
    """Field names plus their aliases: what a user may write in env.toml for this executor."""
    keys: set[str] = set()
    for name, info in cls.model_fields.items():
        keys.add(name)
        if info.alias:
            keys.add(info.alias)
        if isinstance(info.validation_alias, AliasChoices):
            keys.update(c for c in info.validation_alias.choices if isinstance(c, str))
    keys.discard("secret_env_vars")
    return keys


def parse_profile(data: dict[str, Any], *, file: str, section: str) -> _Profile:
    """Validate a resolved env.toml section into its executor's model, or raise one ConfigError."""
    executor = data.get("executor", "local")
    if executor not in PROFILE_TYPES:
        raise ConfigError(
            f"unknown executor {executor!r}; allowed: {', '.join(PROFILE_TYPES)}",
            file=file,
            section=section,
            key="executor",
            hint=did_you_mean(str(executor), PROFILE_TYPES),
        )
    cls = PROFILE_TYPES[executor]
    unknown = sorted(set(data) - accepted_keys(cls) - {"executor"})
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"unknown field for executor '{executor}'",
            file=file,
            section=section,
            key=key,
            hint=did_you_mean(key, accepted_keys(cls)) or f"known fields: {', '.join(sorted(accepted_keys(cls)))}",
        )
    try:
        return _PROFILE_ADAPTER.validate_python({**data, "executor": executor})
    except ValidationError as exc:
        raise _as_config_error(exc, file=file, section=section) from None
    except FieldProblem as problem:
        raise ConfigError(problem.message, file=file, section=section, key=problem.key) from None


def _as_config_error(exc: ValidationError, *, file: str, section: str) -> ConfigError:
    first = exc.errors()[0]
    # loc is (union tag, field, ...) for a discriminated union; drop the tag.
    loc = [str(p) for p in first["loc"]][1:]
    key = ".".join(loc) or None
    if first["type"] == "missing":
        message = "required field is missing"
    else:
        given = first.get("input")
        message = f"{first['msg']} (got {given!r})" if key and not isinstance(given, dict) else first["msg"]
    # Never echo a value of a secret field back.
    if key and any(word in key for word in ("secret", "token", "passphrase")):
        message = first["msg"]
    return ConfigError(message, file=file, section=section, key=key)

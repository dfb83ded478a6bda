"""Execution profiles as typed models, one per executor.

Field names are the seeds' env.toml keys, so an existing env.toml validates unchanged; the
model is what both the file and the Prefect block hold. Secrets are SecretStr: they print as
`**********` and a block stores them encrypted.
"""

from __future__ import annotations

import re
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

from prefect.types import SecretDict

from blocks.errors import ConfigError, did_you_mean

#: Env var names whose values are secrets (the seeds' rule): they move to `secret_env_vars`.
SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)

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


class _Profile(BaseModel):
    """Keys every executor understands."""

    # coerce_numbers_to_str: `mem = 0` or `run.env.mem=0` means "0", as sbatch reads it.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True, coerce_numbers_to_str=True)

    executor: str
    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment of the job.")
    # Prefect's SecretDict: a block obscures every value under it (a dict of SecretStr it does not).
    secret_env_vars: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
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
        if self.packager == "pattern" and not self.include_pattern:
            raise FieldProblem("include_pattern", "packager = 'pattern' needs the files to ship")
        if self.packager == "hybrid" and not self.packager_include_pattern:
            raise FieldProblem("packager_include_pattern", "packager = 'hybrid' needs the files to ship beside git")
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
    executor: Literal["local"] = "local"
    packager: PackagerKind = "none"
    nproc_per_node: int = Field(1, ge=1, validation_alias=AliasChoices("nproc_per_node", "ntasks_per_node"))


class DockerProfile(_Profile, _ContainerFields):
    kind: ClassVar[str] = "docker"
    executor: Literal["docker"] = "docker"
    container_image: str = Field(validation_alias=AliasChoices("container_image", "container"))
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
    user: str | None = None
    port: int | None = None
    identity: str | None = Field(None, description="Private key file for the ssh tunnel.")
    identity_passphrase: SecretStr | None = Field(None, description="Passphrase of `identity`, if it has one.")
    remote_job_dir: str | None = Field(None, description="Job folder on the cluster (required with tunnel=ssh).")


class SlurmProfile(_Profile, _ContainerFields, SSHTunnelFields):
    kind: ClassVar[str] = "slurm"
    executor: Literal["slurm"] = "slurm"
    account: str
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

    @model_validator(mode="after")
    def _ssh_needs_host(self) -> SlurmProfile:
        if self.tunnel == "ssh":
            for name in ("host", "user", "remote_job_dir"):
                if not getattr(self, name):
                    raise FieldProblem(name, "required when tunnel = 'ssh'")
        return self

    def partition_for(self, detached: bool) -> str | None:
        """`batch_partition` for --batch, `run_partition` for --run, `partition` otherwise."""
        preferred = self.batch_partition if detached else self.run_partition
        return preferred or self.partition


class DGXCloudProfile(_Profile, _ContainerFields):
    kind: ClassVar[str] = "dgxcloud"
    executor: Literal["dgxcloud"] = "dgxcloud"
    base_url: str
    kube_apiserver_url: str
    client_id: str = Field(validation_alias=AliasChoices("client_id", "app_id"))
    client_secret: SecretStr = Field(validation_alias=AliasChoices("client_secret", "app_secret"))
    project_name: str
    container_image: str = Field(validation_alias=AliasChoices("container_image", "container"))
    pvc_nemo_run_dir: str
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    nprocs_per_node: int = Field(1, ge=1, validation_alias=AliasChoices("nprocs_per_node", "ntasks_per_node"))
    pvcs: list[dict[str, Any]] = Field(default_factory=list)
    distributed_framework: str = "PyTorch"
    custom_spec: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _run_dir_on_a_pvc(self) -> DGXCloudProfile:
        # NeMo-Run asserts this only at submission; saying it at load time names the key.
        if not any(self.pvc_nemo_run_dir.startswith(str(p.get("path", "")).rstrip("/") + "/") or
                   self.pvc_nemo_run_dir == p.get("path") for p in self.pvcs):
            raise FieldProblem("pvc_nemo_run_dir", "is not under the 'path' of any entry in 'pvcs'")
        return self


class LeptonMount(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    path: str
    mount_path: str
    from_: str | None = Field(None, alias="from")


class LeptonProfile(_Profile, _ContainerFields):
    kind: ClassVar[str] = "lepton"
    executor: Literal["lepton"] = "lepton"
    container_image: str = Field(validation_alias=AliasChoices("container_image", "container"))
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

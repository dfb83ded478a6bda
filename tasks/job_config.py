"""A stage's job configuration: recipe YAML, command-line overrides and the execution profile.

Merge order, the seeds': the recipe YAML's `run.env` gives defaults, the profile (its `extends`
chain applied) overrides them, `run.env.*` overrides on the command line win over both. A
profile thus says what a job gets; one cluster serves a CPU data-prep stage and an 8-GPU
training stage through a profile per stage shape (`[data-prep]`, `[pretrain]` extending one
cluster section). Everything else in the YAML goes to the recipe; `[wandb]` arrives as
`run.wandb`. The job remembers where each executor field came from, for the dry-run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import AliasChoices
from omegaconf.errors import OmegaConfBaseException

from blocks.env_toml import deep_merge
from blocks.errors import ConfigError, did_you_mean
from blocks.profiles import PROFILE_TYPES, _Profile, accepted_keys, parse_profile
from blocks.settings import WandbConfig
from tasks.stages import PROJECT_ROOT, Stage

COMMAND_LINE = "command line"
ENV_PREFIX = "run.env."


@dataclass(frozen=True)
class Override:
    key: str
    value: str
    #: `sft:train.lr=1e-4` applies to one stage only; None applies wherever the key exists.
    stage: str | None = None

    @property
    def token(self) -> str:
        return f"{self.key}={self.value}"


def parse_overrides(tokens: Sequence[str]) -> list[Override]:
    """`key.path=value` or `stage:key.path=value` tokens; anything else is a clear error."""
    parsed = []
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key or key.startswith("-"):
            raise ConfigError(
                f"override {token!r} is not of the form [stage:]key.path=value",
                file=COMMAND_LINE,
                hint="e.g. train.train_iters=50 or sft:train.train_iters=50",
            )
        stage, colon, key = key.rpartition(":")
        parsed.append(Override(key.strip(), value, stage.strip() if colon else None))
    return parsed


def find_config_file(stage: Stage, name: str) -> Path:
    """A config name from the stage's config/ folder, or a path to a YAML file."""
    if "/" in name or name.endswith((".yaml", ".yml")):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", file=COMMAND_LINE, key="--config")
        return path
    for suffix in (".yaml", ".yml"):
        candidate = stage.config_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in stage.config_dir.glob("*.y*ml"))
    raise ConfigError(
        f"stage '{stage.id}' has no config named '{name}'",
        file=COMMAND_LINE,
        key="--config",
        hint=did_you_mean(name, available) or f"available: {', '.join(available)}",
    )


def load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends: report file and line
        raise ConfigError(f"malformed YAML: {str(exc).splitlines()[0]}", file=str(path)) from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError("expected a mapping at the top level", file=str(path))
    return cfg


def _has_key(cfg: DictConfig, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node[part]
    return True


def _siblings(cfg: DictConfig, dotted: str) -> list[str]:
    parent, _, _ = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return []
    prefix = f"{parent}." if parent else ""
    return [f"{prefix}{k}" for k in node.keys()]


def apply_overrides(cfg: DictConfig, overrides: Sequence[Override], *, file: Path) -> DictConfig:
    """Overrides of keys the YAML defines; a key it lacks is a typo until proven otherwise."""
    for override in overrides:
        if not _has_key(cfg, override.key):
            raise ConfigError(
                f"override of '{override.key}', which {file.name} does not define",
                file=str(file),
                key=override.key,
                hint=did_you_mean(override.key, _siblings(cfg, override.key)),
            )
    try:
        merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.token for o in overrides]))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override: {str(exc).splitlines()[0]}", file=COMMAND_LINE) from None
    assert isinstance(merged, DictConfig)
    return merged


def stage_for_config(stage: Stage, cfg: DictConfig, *, file: Path) -> Stage:
    """The stage as the config's `run.backend` runs it (the row's own backend when unset)."""
    backend = OmegaConf.select(cfg, "run.backend", default=None) or stage.backend
    try:
        return stage.for_backend(str(backend))
    except KeyError:
        raise ConfigError(
            f"stage '{stage.id}' has no runtime for backend '{backend}'",
            file=str(file),
            key="run.backend",
            hint=did_you_mean(str(backend), stage.runtimes) or f"backends: {', '.join(stage.runtimes)}",
        ) from None


def canonical_keys(cls: type[_Profile], data: dict[str, Any]) -> dict[str, Any]:
    """Every key under its field name (`container` → `container_image`, a local profile's
    `ntasks_per_node` → `nproc_per_node`), so the recipe's spelling cannot beat the profile's."""
    names: dict[str, str] = {}
    for name, info in cls.model_fields.items():
        if isinstance(info.validation_alias, AliasChoices):
            names.update({alias: name for alias in info.validation_alias.choices if isinstance(alias, str)})
    return {names.get(key, key): value for key, value in data.items()}


def _flat_keys(data: dict[str, Any]) -> list[str]:
    """Top-level keys, and `key.sub` for a table's entries (env_vars are merged entry by entry)."""
    keys = []
    for key, value in data.items():
        keys.append(key)
        if isinstance(value, dict):
            keys.extend(f"{key}.{sub}" for sub in value)
    return keys


def _profile_source(key: str, profile_name: str, profile_origin: str, sections: Mapping[str, str]) -> str:
    section = sections.get(key) or sections.get(key.split(".")[0]) or profile_name
    where = f"profile [{profile_name}]" if section == profile_name else f"profile [{profile_name}], inherited from [{section}]"
    if profile_origin.startswith("block:"):
        return f"{where}, {profile_origin.replace(':', ' ', 1)}"
    return where


def effective_profile(
    profile: _Profile,
    explicit: frozenset[str],
    yaml_env: dict[str, Any],
    env_overrides: Sequence[Override],
    *,
    profile_name: str,
    config_file: Path,
    profile_origin: str = "",
    sections: Mapping[str, str] | None = None,
) -> tuple[_Profile, dict[str, str]]:
    """YAML run.env ⊕ profile ⊕ run.env.* overrides, validated as the profile's executor; and
    for every key set, where its value came from.

    The seeds' order: the recipe's run.env only fills in what the profile leaves open, so
    `nodes = 8` in a profile means 8 nodes whatever the recipe's default. YAML keys the executor
    does not have are recipe defaults for other executors (a container image means nothing to
    `local`) and are skipped; an override of an unknown key is an error.
    """
    cls = PROFILE_TYPES[profile.executor]
    known = accepted_keys(cls)
    defaults = canonical_keys(cls, {k: v for k, v in yaml_env.items() if k in known and k != "executor"})
    dumped = profile.model_dump(by_alias=False)
    own = {k: dumped[k] for k in explicit if k in dumped}
    # env_vars arrive split in two; keep secrets out of the plain dict's way.
    own.pop("secret_env_vars", None)
    secret_env = profile.secret_env()
    if secret_env:
        own["env_vars"] = {**own.get("env_vars", {}), **secret_env}
    recipe_source = f"recipe {_shown_path(config_file)} run.env"
    sources = {key: recipe_source for key in _flat_keys(defaults)}
    sources.update(
        {key: _profile_source(key, profile_name, profile_origin, sections or {}) for key in _flat_keys(own)}
    )
    merged = deep_merge(defaults, own)
    if not env_overrides:
        job = parse_profile(merged, file=str(config_file), section=f"run.env + profile {profile_name}")
        _check_image(job, profile_name, profile_origin, config_file)
        return job, sources
    extra: dict[str, Any] = {}
    for override in env_overrides:
        key = override.key[len(ENV_PREFIX):]
        top = key.split(".")[0]
        if top not in known:
            raise ConfigError(
                f"executor '{profile.executor}' has no field '{top}'",
                file=COMMAND_LINE,
                key=override.key,
                hint=did_you_mean(top, known),
            )
        node = extra
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={override.value}"]))["v"]  # type: ignore[index]
    extra = canonical_keys(cls, extra)
    sources.update({key: f"command line {ENV_PREFIX}{key}" for key in _flat_keys(extra)})
    job = parse_profile(deep_merge(merged, extra), file=COMMAND_LINE, section=f"profile {profile_name}")
    _check_image(job, profile_name, profile_origin, config_file)
    return job, sources


def _check_image(job: _Profile, profile_name: str, profile_origin: str, config_file: Path) -> None:
    """An executor that runs containers gets its image from the profile or the recipe; neither
    is an error before anything is submitted, named where a user would add it."""
    if not job.needs_image or getattr(job, "container_image", None):
        return
    env_file = profile_origin.removeprefix("env.toml:") if profile_origin.startswith("env.toml:") else None
    raise ConfigError(
        f"required field is missing: executor '{job.executor}' runs jobs in a container, and neither the "
        f"profile nor {_shown_path(config_file)} (run.env.container_image) names one",
        file=env_file or str(config_file),
        section=profile_name,
        key="container_image",
        hint="set container_image in the profile, or pass run.env.container_image=IMAGE",
    )


def _shown_path(path: Path) -> str:
    """A recipe config relative to the project when it is one of ours, else as given."""
    resolved = path.resolve()
    return str(resolved.relative_to(PROJECT_ROOT)) if resolved.is_relative_to(PROJECT_ROOT) else str(path)


@dataclass(frozen=True)
class JobConfig:
    """Everything a stage's submission needs, resolved."""

    stage: Stage
    config_name: str
    config_file: Path
    #: What the recipe receives (as --config): the YAML with overrides, run.wandb set, run.env removed.
    recipe_config: DictConfig
    profile_name: str
    profile: _Profile
    profile_origin: str
    overrides: tuple[str, ...] = field(default_factory=tuple)
    #: Where each executor field set for this job came from (recipe, profile section, command
    #: line); `env_vars.X` per entry.
    field_sources: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def recipe_yaml(self) -> str:
        return OmegaConf.to_yaml(self.recipe_config, resolve=True)


def build_job_config(
    stage: Stage,
    config_name: str,
    *,
    profile: _Profile,
    profile_name: str,
    profile_origin: str,
    explicit_fields: frozenset[str] | None = None,
    profile_sections: Mapping[str, str] | None = None,
    overrides: Sequence[Override] = (),
    wandb: WandbConfig | None = None,
    loaded: DictConfig | None = None,
) -> JobConfig:
    """`loaded`: the config file's YAML when the caller has read it already (it is read once per run)."""
    config_file = find_config_file(stage, config_name)
    cfg = loaded if loaded is not None else load_yaml(config_file)
    env_overrides = [o for o in overrides if o.key.startswith(ENV_PREFIX)]
    recipe_overrides = [o for o in overrides if not o.key.startswith(ENV_PREFIX)]
    cfg = apply_overrides(cfg, recipe_overrides, file=config_file)
    stage = stage_for_config(stage, cfg, file=config_file)
    yaml_env = OmegaConf.to_container(cfg.run.env, resolve=True) if _has_key(cfg, "run.env") else {}
    assert isinstance(yaml_env, dict)
    effective, sources = effective_profile(
        profile,
        explicit_fields if explicit_fields is not None else frozenset(profile.model_fields_set),
        yaml_env,  # type: ignore[arg-type]
        env_overrides,
        profile_name=profile_name,
        config_file=config_file,
        profile_origin=profile_origin,
        sections=profile_sections,
    )
    recipe = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(recipe, dict)
    run_block = dict(recipe.get("run") or {})
    run_block.pop("env", None)
    if wandb is not None:
        run_block["wandb"] = wandb.for_job()
    recipe["run"] = run_block
    return JobConfig(
        stage=stage,
        config_name=config_name,
        config_file=config_file,
        recipe_config=OmegaConf.create(recipe),
        profile_name=profile_name,
        profile=effective,
        profile_origin=profile_origin,
        overrides=tuple(o.token for o in overrides),
        field_sources=tuple(sorted(sources.items())),
    )

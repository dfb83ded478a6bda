"""Reading the seeds' env.toml: discovery, `extends` inheritance and `${oc.env:VAR}` interpolation.

The file stays the authoring format users already have; this module turns one section of it
into a plain, fully resolved mapping. Typing that mapping is `blocks.profiles`' job.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blocks.errors import ConfigError, did_you_mean

ENV_FILE_VAR = "NEMOTRON_ENV_FILE"
ENV_FILE_NAME = "env.toml"
#: Sections that configure the tool itself rather than describe where to run.
RESERVED_SECTIONS = ("wandb", "artifacts", "cache", "cli")


def find_env_file(start: Path | None = None) -> Path | None:
    """`$NEMOTRON_ENV_FILE` if set, else the nearest env.toml from `start` (cwd) upwards."""
    from blocks.tool_settings import tool_settings

    explicit = tool_settings().env_file
    if explicit:
        path = explicit.expanduser()
        if not path.is_file():
            raise ConfigError(f"{ENV_FILE_VAR} points at {path}, which is not a file")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / ENV_FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key, the right side winning; anything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _interpolate(value: Any, *, file: str, section: str, key: str) -> Any:
    """Resolve `${oc.env:VAR}` / `${oc.env:VAR,default}` in every string, leaf by leaf.

    Leaf by leaf so that an unset variable is reported with the exact key that needs it.
    """
    if isinstance(value, Mapping):
        return {k: _interpolate(v, file=file, section=section, key=f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, file=file, section=section, key=f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.create({"v": value}).v
    except OmegaConfBaseException as exc:
        reason = str(exc).splitlines()[0]
        hint = "export it, or give a default: ${oc.env:VAR,default}" if "not found" in reason else None
        raise ConfigError(f"cannot resolve {value!r}: {reason}", file=file, section=section, key=key, hint=hint) from None


@dataclass(frozen=True)
class EnvFile:
    """A parsed env.toml. Profiles are resolved on demand so a broken profile you do not use
    (say, one needing an unset variable) does not stop you from using the others."""

    path: Path
    raw_profiles: dict[str, dict[str, Any]]
    reserved: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def profile_names(self) -> list[str]:
        return list(self.raw_profiles)

    def has_profile(self, name: str) -> bool:
        return name in self.raw_profiles

    def is_base(self, name: str) -> bool:
        """A section other profiles extend and that names no executor anywhere in its chain:
        a bundle of shared settings, not a place to run. Listing and pushing skip it."""
        extended = any(p.get("extends") == name for p in self.raw_profiles.values())
        chain, seen = name, set()
        while chain in self.raw_profiles and chain not in seen:
            seen.add(chain)
            if "executor" in self.raw_profiles[chain]:
                return False
            chain = self.raw_profiles[chain].get("extends")
        return extended

    def runnable_profiles(self) -> list[str]:
        return [name for name in self.raw_profiles if not self.is_base(name)]

    def _inherited(self, name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if name in chain:
            cycle = " -> ".join((*chain[chain.index(name):], name))
            raise ConfigError(f"'extends' forms a cycle: {cycle}", file=str(self.path), section=chain[0], key="extends")
        section = self.raw_profiles[name]
        parent = section.get("extends")
        own = {k: v for k, v in section.items() if k != "extends"}
        if parent is None:
            return own
        if not isinstance(parent, str):
            raise ConfigError("'extends' must name one profile", file=str(self.path), section=name, key="extends")
        if parent not in self.raw_profiles:
            reason = "is a reserved section, not a profile" if parent in RESERVED_SECTIONS else "is not a profile in this file"
            raise ConfigError(
                f"parent profile '{parent}' {reason}",
                file=str(self.path),
                section=name,
                key="extends",
                hint=did_you_mean(parent, self.raw_profiles) or f"profiles here: {', '.join(self.raw_profiles)}",
            )
        return deep_merge(self._inherited(parent, (*chain, name)), own)

    def profile(self, name: str) -> dict[str, Any]:
        """The section `name` with its `extends` chain applied and env references resolved."""
        if name not in self.raw_profiles:
            if name in RESERVED_SECTIONS:
                raise ConfigError(f"[{name}] is a reserved section, not a profile", file=str(self.path))
            raise ConfigError(
                f"no profile named '{name}'",
                file=str(self.path),
                hint=did_you_mean(name, self.raw_profiles) or f"profiles here: {', '.join(self.raw_profiles) or 'none'}",
            )
        merged = self._inherited(name, ())
        return _interpolate(merged, file=str(self.path), section=name, key="")

    def field_sections(self, name: str) -> dict[str, str]:
        """Which section of `name`'s `extends` chain set each key (tables key by key, `env_vars.X`),
        so a plan can say that `nodes = 8` came from [pretrain-large] and `account` from [base]."""
        chain: list[str] = []
        current: Any = name
        while isinstance(current, str) and current in self.raw_profiles and current not in chain:
            chain.append(current)
            current = self.raw_profiles[current].get("extends")
        sections: dict[str, str] = {}
        for section in reversed(chain):  # the root first: nearer sections overwrite
            for key, value in self.raw_profiles[section].items():
                if key == "extends":
                    continue
                sections[key] = section
                if isinstance(value, Mapping):
                    sections.update({f"{key}.{sub}": section for sub in value})
        return sections

    def section(self, name: str) -> dict[str, Any] | None:
        """A reserved section ([wandb], [artifacts], [cache], [cli]), resolved, or None."""
        raw = self.reserved.get(name)
        if raw is None:
            return None
        return _interpolate(raw, file=str(self.path), section=name, key="")


def load_env_file(path: Path) -> EnvFile:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)": keep it, it is the useful part.
        raise ConfigError(f"malformed TOML: {exc}", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    profiles: dict[str, dict[str, Any]] = {}
    reserved: dict[str, dict[str, Any]] = {}
    for name, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(
                f"top-level key '{name}' is outside any [section]",
                file=str(path),
                key=name,
                hint="every setting belongs to a profile or a reserved section",
            )
        (reserved if name in RESERVED_SECTIONS else profiles)[name] = value
    return EnvFile(path=path, raw_profiles=profiles, reserved=reserved)


def discover_env_file(start: Path | None = None) -> EnvFile | None:
    path = find_env_file(start)
    return load_env_file(path) if path else None

"""The lookup `--run NAME` goes through: the env.toml section, else the Prefect block of that name.

Prefect is imported only when a profile (or a reserved section) has to come from a block: a
profile found in env.toml (every dry-run of a profile in env.toml) never imports it, which is
about 0.6-1.6 s of a command here (docs/performance.md). The blocks themselves are in
blocks/profile_blocks.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocks.block_names import (  # noqa: F401  (check_reserved_sections and prefect_api: part of the lookup's API)
    ARTIFACTS_BLOCK,
    WANDB_BLOCK,
    block_name,
    check_reserved_sections,
    prefect_api,
)
from blocks.env_toml import RESERVED_SECTIONS, EnvFile, discover_env_file
from blocks.errors import ConfigError, did_you_mean
from blocks.profiles import _Profile, parse_profile
from blocks.settings import ArtifactsConfig, WandbConfig, parse_section

if TYPE_CHECKING:
    from blocks.profile_blocks import ExecutionProfileBlock


@dataclass(frozen=True)
class ResolvedProfile:
    name: str
    profile: _Profile
    #: "env.toml:<path>" or "block:<name>", shown in plans so users know which one won.
    origin: str
    #: Fields the user set; the others give way to a recipe's run.env defaults.
    explicit: frozenset[str] = frozenset()
    #: The env.toml section that set each key (`env_vars.X` for a table's entries), for plans.
    sections: Mapping[str, str] = field(default_factory=dict)


def block_store_configured() -> bool:
    """Whether any blocks could exist: a Prefect API is set, or the local server's database exists.

    Without this, looking up a mistyped profile would start an ephemeral Prefect server (seconds)
    only to find an empty database.
    """
    from prefect.settings import get_current_settings  # deferred: only a lookup outside env.toml needs Prefect

    settings = get_current_settings()
    if settings.api.url:
        return True
    url = settings.server.database.connection_url
    database = url.get_secret_value() if url else ""
    if database.startswith("sqlite"):
        return Path(database.split(":///", 1)[-1]).exists()
    return bool(database)


def _load_block(name: str) -> ExecutionProfileBlock | None:
    if not block_store_configured():
        return None
    from blocks.profile_blocks import ExecutionProfileBlock  # deferred: imports Prefect

    try:
        with prefect_api():
            return ExecutionProfileBlock.load(block_name(name))
    except ValueError:  # no block of that name
        return None


def resolve_profile(name: str, env: EnvFile | None | bool = True) -> ResolvedProfile:
    """env.toml section `name` if an env.toml is found and has it, else the block of that name.

    `env=True` discovers the file; pass an EnvFile to use it, or None to look at blocks only.
    """
    env_file = discover_env_file() if env is True else env or None
    if name in RESERVED_SECTIONS:
        raise ConfigError(
            f"[{name}] is a reserved section, not a profile",
            file=str(env_file.path) if env_file else None,
            hint=f"reserved: {', '.join(RESERVED_SECTIONS)}",
        )
    if env_file is not None and env_file.has_profile(name):
        profile = parse_profile(env_file.profile(name), file=str(env_file.path), section=name)
        return ResolvedProfile(
            name, profile, f"env.toml:{env_file.path}", frozenset(profile.model_fields_set), env_file.field_sections(name)
        )
    block = _load_block(name)
    if block is not None:
        return ResolvedProfile(
            name, block.profile, f"block:{block_name(name)}", frozenset(block.explicit_fields), dict(block.field_sections)
        )
    where = f"{env_file.path}" if env_file else "no env.toml found (NEMOTRON_ENV_FILE or ./env.toml upwards)"
    known = env_file.profile_names if env_file else []
    raise ConfigError(
        f"no profile named '{name}' in env.toml or in Prefect blocks",
        file=where if env_file else None,
        hint=did_you_mean(name, known) or (f"profiles in env.toml: {', '.join(known)}" if known else where),
    )


def _reserved_section(env: EnvFile | None, profile: ResolvedProfile, name: str, block_class: str, block_name_: str) -> Any:
    """A reserved section from env.toml; for a profile that came from a block, the pushed block."""
    if env is not None and name in env.reserved:
        return parse_section(name, env.section(name), file=str(env.path))
    if profile.origin.startswith("block:"):
        from blocks import profile_blocks  # deferred: imports Prefect, needed only for a profile from a block

        try:
            return getattr(profile_blocks, block_class).load(block_name_).settings
        except ValueError:
            return None
    return None


def resolve_wandb(env: EnvFile | None, profile: ResolvedProfile) -> WandbConfig | None:
    return _reserved_section(env, profile, "wandb", "WandbSettings", WANDB_BLOCK)


def resolve_artifacts(env: EnvFile | None, profile: ResolvedProfile) -> ArtifactsConfig | None:
    return _reserved_section(env, profile, "artifacts", "ArtifactStoreSettings", ARTIFACTS_BLOCK)

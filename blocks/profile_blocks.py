"""Profiles and settings as Prefect blocks, and the lookup `--run NAME` goes through.

A deployment's worker on another machine has no env.toml: it finds the same profiles, fully
resolved and typed, in the Prefect server's block store, secrets encrypted there.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from prefect.blocks.core import Block
from pydantic import Field

from blocks.env_toml import RESERVED_SECTIONS, EnvFile, discover_env_file
from blocks.errors import ConfigError, did_you_mean
from blocks.profiles import Profile, _Profile, parse_profile
from blocks.settings import ArtifactsConfig, WandbConfig, parse_section


class ExecutionProfileBlock(Block):
    """One env.toml profile with its `extends` chain applied and env references resolved."""

    _block_type_name = "nano3 Execution Profile"
    _block_type_slug = "nano3-execution-profile"
    _description = "Where and how a nano3 stage runs: a NeMo-Run executor, typed per kind."

    profile_name: str = Field(description="The section name in env.toml.")
    source: str | None = Field(None, description="The env.toml it was pushed from.")
    profile: Profile
    explicit_fields: list[str] = Field(
        default_factory=list,
        description="Fields the env.toml set itself; the rest may take the recipe's run.env defaults.",
    )
    field_sections: dict[str, str] = Field(
        default_factory=dict,
        description="The env.toml section (of the extends chain) that set each field, shown in plans.",
    )


class WandbSettings(Block):
    _block_type_name = "nano3 Weights and Biases Settings"
    _block_type_slug = "nano3-wandb-settings"

    settings: WandbConfig


class ArtifactStoreSettings(Block):
    _block_type_name = "nano3 Artifact Store"
    _block_type_slug = "nano3-artifact-store"

    settings: ArtifactsConfig


#: Block names for the reserved sections (one of each per Prefect server).
WANDB_BLOCK = "default"
ARTIFACTS_BLOCK = "default"


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """Prefect's "cannot reach / cannot start the API" RuntimeError as one readable error."""
    try:
        yield
    except RuntimeError as exc:
        raise ConfigError(f"cannot reach the Prefect API: {exc}", hint="check PREFECT_API_URL, or retry") from None


def block_name(profile_name: str) -> str:
    """Prefect block names are lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9-]+", "-", profile_name.lower()).strip("-")
    if not slug:
        raise ConfigError(f"profile name {profile_name!r} has no letters or digits to name a block with")
    return slug


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



def push_env_file(env: EnvFile) -> list[str]:
    """Save every profile (and [wandb], [artifacts]) of `env` as blocks; returns the block names.

    All profiles are validated before the first block is written: bad input writes nothing.
    """
    check_reserved_sections(env)
    profiles = {name: parse_profile(env.profile(name), file=str(env.path), section=name) for name in env.runnable_profiles()}
    names = {name: block_name(name) for name in profiles}
    clashes = {b for b in names.values() if list(names.values()).count(b) > 1}
    if clashes:
        raise ConfigError(f"profiles map to the same block name: {', '.join(sorted(clashes))}", file=str(env.path))
    wandb = parse_section("wandb", env.section("wandb"), file=str(env.path)) if "wandb" in env.reserved else None
    artifacts = (
        parse_section("artifacts", env.section("artifacts"), file=str(env.path)) if "artifacts" in env.reserved else None
    )
    with prefect_api():
        _save_blocks(env, profiles, names, wandb, artifacts)
    return [names[n] for n in profiles]


def _save_blocks(env: EnvFile, profiles: dict, names: dict, wandb: object, artifacts: object) -> None:
    for name, profile in profiles.items():
        ExecutionProfileBlock(
            profile_name=name,
            source=str(env.path),
            profile=profile,
            explicit_fields=sorted(profile.model_fields_set),
            field_sections=env.field_sections(name),
        ).save(names[name], overwrite=True)
    if wandb is not None:
        WandbSettings(settings=wandb).save(WANDB_BLOCK, overwrite=True)
    if artifacts is not None:
        ArtifactStoreSettings(settings=artifacts).save(ARTIFACTS_BLOCK, overwrite=True)


def check_reserved_sections(env: EnvFile) -> None:
    """[wandb], [artifacts], [cache], [cli] are validated up front, like the profiles."""
    for name in env.reserved:
        parse_section(name, env.section(name), file=str(env.path))


def list_profile_blocks() -> list[ExecutionProfileBlock]:
    from prefect.client.orchestration import get_client

    with prefect_api(), get_client(sync_client=True) as client:
        docs = client.read_block_documents_by_type(ExecutionProfileBlock.get_block_type_slug(), include_secrets=False)
        return [ExecutionProfileBlock.load(doc.name) for doc in sorted(docs, key=lambda d: d.name or "")]


def block_store_configured() -> bool:
    """Whether any blocks could exist: a Prefect API is set, or the local server's database exists.

    Without this, looking up a mistyped profile would start an ephemeral Prefect server (seconds)
    only to find an empty database.
    """
    from prefect.settings import get_current_settings

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
    try:
        return ExecutionProfileBlock.load(block_name(name))
    except ValueError:
        return None
    except RuntimeError as exc:  # the API could not be reached or started
        raise ConfigError(f"cannot read profile blocks from Prefect: {exc}", hint="check PREFECT_API_URL") from None


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


def _reserved_section(env: EnvFile | None, profile: ResolvedProfile, name: str, block: type[Block], block_name_: str):  # noqa: ANN202
    """A reserved section from env.toml; for a profile that came from a block, the pushed block."""
    if env is not None and name in env.reserved:
        return parse_section(name, env.section(name), file=str(env.path))
    if profile.origin.startswith("block:"):
        try:
            return block.load(block_name_).settings  # type: ignore[attr-defined]
        except ValueError:
            return None
    return None


def resolve_wandb(env: EnvFile | None, profile: ResolvedProfile) -> WandbConfig | None:
    return _reserved_section(env, profile, "wandb", WandbSettings, WANDB_BLOCK)


def resolve_artifacts(env: EnvFile | None, profile: ResolvedProfile) -> ArtifactsConfig | None:
    return _reserved_section(env, profile, "artifacts", ArtifactStoreSettings, ARTIFACTS_BLOCK)

"""Profiles and settings as Prefect blocks (the lookup `--run NAME` goes through is blocks/profile_lookup.py).

A deployment's worker on another machine has no env.toml: it finds the same profiles, fully
resolved and typed, in the Prefect server's block store, secrets encrypted there.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block, schema_extra
from pydantic import ConfigDict, Field

from blocks.env_toml import EnvFile
from blocks.errors import ConfigError
from blocks.block_names import ARTIFACTS_BLOCK, WANDB_BLOCK, block_name, check_reserved_sections, prefect_api
from blocks.profiles import Profile, SecretEnvVars, parse_profile
from blocks.settings import ArtifactsConfig, WandbConfig, parse_section


def _secret_fields(name: str, annotation: Any, secrets: list[str]) -> None:
    """Prefect's walk over a block's fields for its secret ones, knowing SecretEnvVars too: every
    value under it is secret (`name.*`), as under Prefect's own SecretDict, which the profile
    models leave out so that parsing a profile does not import Prefect."""
    from prefect.blocks.core import _collect_secret_fields, _is_subclass, _nested_type_args
    from pydantic import BaseModel

    if _is_subclass(annotation, SecretEnvVars):
        secrets.append(f"{name}.*")
    elif nested := _nested_type_args(annotation):
        for member in nested:
            _secret_fields(name, member, secrets)
    elif _is_subclass(annotation, BaseModel) and not Block.is_block_class(annotation):
        for field_name, field in annotation.model_fields.items():
            if field.annotation is not None:
                _secret_fields(f"{name}.{field_name}", field.annotation, secrets)
    else:
        _collect_secret_fields(name, annotation, secrets)


def _schema_extra(schema: dict[str, Any], model: type[Block]) -> None:
    """Prefect's block schema, with the secret fields of SecretEnvVars marked as Prefect marks a SecretDict's."""
    schema_extra(schema, model)
    secrets: list[str] = []
    for name, field in model.model_fields.items():
        if field.annotation is not None:
            _secret_fields(name, field.annotation, secrets)
    schema["secret_fields"] = secrets


class ExecutionProfileBlock(Block):
    """One env.toml profile with its `extends` chain applied and env references resolved."""

    _block_type_name = "nano3 Execution Profile"
    _block_type_slug = "nano3-execution-profile"
    _description = "Where and how a nano3 stage runs: a NeMo-Run executor, typed per kind."
    model_config = ConfigDict(json_schema_extra=_schema_extra)

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


def list_profile_blocks() -> list[ExecutionProfileBlock]:
    from prefect.client.orchestration import get_client

    with prefect_api(), get_client(sync_client=True) as client:
        docs = client.read_block_documents_by_type(ExecutionProfileBlock.get_block_type_slug(), include_secrets=False)
        return [ExecutionProfileBlock.load(doc.name) for doc in sorted(docs, key=lambda d: d.name or "")]

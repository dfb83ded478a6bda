"""The reserved env.toml sections as typed models: [wandb], [artifacts], [cache], [cli]."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from blocks.errors import ConfigError, did_you_mean


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WandbConfig(_Section):
    """[wandb]: injected into every job's config as `run.wandb` (without the key)."""

    project: str | None = None
    entity: str | None = None
    api_key: SecretStr | None = Field(None, description="Else WANDB_API_KEY or `wandb login`.")
    mode: Literal["online", "offline", "disabled"] | None = None
    group: str | None = None
    job_type: str | None = None
    name: str | None = Field(None, alias="run_name")
    tags: list[str] = Field(default_factory=list)
    base_url: str | None = None

    def for_job(self) -> dict[str, Any]:
        """What the recipe sees as run.wandb: everything but the secret."""
        return self.model_dump(exclude={"api_key"}, exclude_none=True, exclude_defaults=False)


class ArtifactsConfig(_Section):
    """[artifacts]: where artifacts live. `root` is any fsspec URL (a folder, s3://bucket/prefix)."""

    root: str | None = None
    backend: Literal["file", "wandb"] | None = None
    wandb: bool = False
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, for s3:// roots.")
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    region: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _seed_manifest_root(cls, data: Any) -> Any:
        # The seeds' code spells it `[artifacts.manifest] root = ...`; their docs spell `root`.
        if isinstance(data, dict) and isinstance(data.get("manifest"), dict):
            data = dict(data)
            manifest = data.pop("manifest")
            data.setdefault("root", manifest.get("root"))
        return data


class CacheConfig(_Section):
    git_dir: str | None = None


class CliConfig(_Section):
    theme: str | None = None


SECTION_TYPES: dict[str, type[_Section]] = {
    "wandb": WandbConfig,
    "artifacts": ArtifactsConfig,
    "cache": CacheConfig,
    "cli": CliConfig,
}


def parse_section(name: str, data: dict[str, Any] | None, *, file: str) -> _Section:
    cls = SECTION_TYPES[name]
    try:
        return cls.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden" and key:
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            raise ConfigError("unknown field", file=file, section=name, key=key, hint=did_you_mean(key, known)) from None
        raise ConfigError(first["msg"], file=file, section=name, key=key) from None

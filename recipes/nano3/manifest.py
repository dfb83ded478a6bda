"""manifest.json: the one contract between a recipe and the task that ran it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="Relative to the artifact folder, '/'-separated.")
    sha256: str
    size: int


class InputRef(BaseModel):
    """An artifact a stage consumed, as the orchestrator resolved it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    digest: str
    type: str
    path: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    stage: str
    files: list[FileEntry]
    metrics: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputRef] = Field(default_factory=list)

    @property
    def digest(self) -> str:
        """One digest for the whole artifact: over its files' paths and digests, in order."""
        import hashlib

        joined = "\n".join(f"{f.path}\t{f.sha256}" for f in sorted(self.files, key=lambda f: f.path))
        return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()

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


class Report(BaseModel):
    """A table of numbers and the charts drawn from it: what a run summary, the Prefect UI and
    W&B show of a stage beyond its headline metrics (eval: every checkpoint of the run, side by side)."""

    model_config = ConfigDict(extra="forbid")
    title: str
    #: Column names, in order; the first one names each row.
    columns: list[str]
    rows: list[dict[str, Any]]
    #: PNG files of the artifact folder ('/'-separated, relative to it).
    charts: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    stage: str
    files: list[FileEntry]
    metrics: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputRef] = Field(default_factory=list)
    report: Report | None = None

    @property
    def digest(self) -> str:
        """One digest for the whole artifact: over its files' paths and digests, in order."""
        import hashlib

        joined = "\n".join(f"{f.path}\t{f.sha256}" for f in sorted(self.files, key=lambda f: f.path))
        return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()

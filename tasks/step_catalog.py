"""The steps catalog: one manifest per step, `tasks/steps/<id>/step.toml`, as in the seeds.

A manifest is data: the step's name, category, description, tags, configs and parameters, and
how it runs here: as a stage of the nano3 pipeline (`stage`, with the runtime `backend` its
configs select), or as a tool that runs in this process (`tool`). A step this project has no
runtime for says what it needs (`requires`) and is refused by `steps run` instead of pretending
to work.

What a step consumes and produces is declared once. A stage step's artifact types are its
stage's (tasks.stages, the runtime of the step's backend; both backends' when the step names
none: its script takes either), and its manifest only describes them: `[inputs]` maps each
input name (a key of the config's `run:` block) to what it is for this step, `[output]` says
what it publishes. A manifest that redeclares a stage step's types (`[[consumes]]`,
`[[produces]]`) is refused. Tools and steps that cannot run here have no stage runtime to read
them from: they declare `[[consumes]]`/`[[produces]]` themselves, checked against the one list
of artifact types in tasks.stages.

Loading is cheap (tomllib and pydantic, no YAML, no NeMo-Run): `nemotron steps list` reads every
manifest on each call and still answers in well under a second.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from blocks.errors import ConfigError, did_you_mean
from tasks.stages import ARTIFACT_TYPES, STAGES_BY_ID, Runtime, Stage

CATALOG_ROOT = Path(__file__).resolve().parent / "steps"
MANIFEST_NAME = "step.toml"
#: Steps that run in this process instead of as a job: the CLI maps each name to its function.
TOOLS = ("env_toml",)
#: Where a bad step id or filter came from (tasks.job_config.COMMAND_LINE, whose module loads
#: omegaconf and Prefect: `steps list` needs neither).
COMMAND_LINE = "command line"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactRef(_Entry):
    type: str
    description: str = ""
    required: bool = True
    #: The input name (a key of the config's `run:` block) a stage step reads it from.
    input: str | None = None


class OutputInfo(_Entry):
    """The [output] table of a stage step: what it publishes, for this step."""

    description: str = ""


class Parameter(_Entry):
    #: A dotted key of the step's configs, overridable as `name=value`.
    name: str
    description: str = ""


class StepInfo(_Entry):
    """The [step] table."""

    id: str
    name: str
    category: str
    description: str
    tags: tuple[str, ...] = ()
    #: The nano3 stage this step runs as (tasks.stages), or None for a tool.
    stage: str | None = None
    #: The runtime backend its configs select (`run.backend`); None where the script takes both.
    backend: Literal["hf", "megatron"] | None = None
    tool: str | None = None
    configs: tuple[str, ...]
    default_config: str
    #: Set when this project cannot run the step: the runtime it needs and does not ship.
    requires: str | None = None


class StepManifest(_Entry):
    step: StepInfo
    #: The artifacts the step reads and writes. A stage step's come from its stage (load_manifest
    #: fills them in); tools and steps that cannot run here declare their own.
    consumes: tuple[ArtifactRef, ...] = ()
    produces: tuple[ArtifactRef, ...] = ()
    #: A stage step's input name → what that input is for this step.
    inputs: dict[str, str] = Field(default_factory=dict)
    #: What a stage step publishes, for this step.
    output: OutputInfo | None = None
    parameters: tuple[Parameter, ...] = ()
    #: The folder holding step.toml (and config/ for a tool's own configs).
    folder: Path

    @model_validator(mode="after")
    def _runs_one_way(self) -> StepManifest:
        if (self.step.stage is None) == (self.step.tool is None):
            raise ValueError("a step runs either as a `stage` or as a `tool`: set exactly one")
        if self.step.default_config not in self.step.configs:
            raise ValueError(f"default_config {self.step.default_config!r} is not one of configs")
        return self

    @property
    def types_from_stage(self) -> bool:
        """A runnable stage step: its stage declares its artifact types, its manifest describes them."""
        return self.step.stage is not None and self.step.requires is None

    # --- convenient views -------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.step.id

    @property
    def summary(self) -> str:
        """The description's first sentence, for one-line listings."""
        text = " ".join(self.step.description.split())
        return text.split(". ")[0].rstrip(".") + "."

    @property
    def runnable(self) -> bool:
        return self.step.requires is None

    @property
    def stage(self) -> Stage | None:
        """The stage this step runs as, on the step's backend."""
        if not self.step.stage:
            return None
        stage = STAGES_BY_ID[self.step.stage]
        return stage.for_backend(self.step.backend) if self.step.backend else stage

    @property
    def config_dir(self) -> Path:
        """A stage step's configs are its recipe's; a tool's sit beside its manifest."""
        stage = self.stage
        return stage.config_dir if stage is not None else self.folder / "config"

    def config_path(self, name: str) -> Path:
        return self.config_dir / f"{name}.yaml"

    def consumed_types(self) -> set[str]:
        return {ref.type for ref in self.consumes}

    def produced_types(self) -> set[str]:
        return {ref.type for ref in self.produces}


def _check_types(manifest: StepManifest, file: str) -> None:
    for section, refs in (("consumes", manifest.consumes), ("produces", manifest.produces)):
        for ref in refs:
            if ref.type not in ARTIFACT_TYPES:
                raise ConfigError(
                    f"unknown artifact type {ref.type!r}",
                    file=file,
                    section=section,
                    key="type",
                    hint=did_you_mean(ref.type, ARTIFACT_TYPES) or f"types: {', '.join(ARTIFACT_TYPES)}",
                )


def _check_own_types(manifest: StepManifest, file: str) -> None:
    """A tool, or a step that cannot run here, declares its types: [inputs]/[output] describe a stage's."""
    kind = "a tool" if manifest.step.tool is not None else "a step that cannot run here"
    for section, present in (("inputs", manifest.inputs), ("output", manifest.output)):
        if present:
            raise ConfigError(
                f"this table describes a stage's artifacts; {kind} declares its own with [[consumes]] and [[produces]]",
                file=file,
                section=section,
            )
    if not manifest.produces:
        raise ConfigError(
            f"{kind} declares what it produces: at least one [[produces]] with a type", file=file, section="produces"
        )
    _check_types(manifest, file)


def _stage_of(manifest: StepManifest, file: str) -> Stage:
    info = manifest.step
    stage = STAGES_BY_ID.get(info.stage or "")
    if stage is None:
        raise ConfigError(
            f"unknown stage {info.stage!r}",
            file=file,
            section="step",
            key="stage",
            hint=did_you_mean(info.stage or "", STAGES_BY_ID) or f"stages: {', '.join(STAGES_BY_ID)}",
        )
    if info.backend is not None and info.backend not in stage.runtimes:
        raise ConfigError(
            f"stage {stage.id} has no runtime for backend {info.backend!r}", file=file, section="step", key="backend"
        )
    return stage


def step_runtimes(stage: Stage, backend: str | None) -> list[Runtime]:
    """The runtimes a step of `stage` runs: its backend's, or every backend's where it names none
    (its script takes either; its config's `run.backend` picks)."""
    runtimes = stage.runtimes
    return [runtimes[backend]] if backend is not None else list(runtimes.values())


def _stage_types(stage: Stage, runtimes: list[Runtime]) -> str:
    """What the runtimes consume and produce, in words, for an error message."""
    consumes = list(dict.fromkeys(f"{name}: {kind}" for runtime in runtimes for name, kind in runtime.consumes))
    produces = list(dict.fromkeys(runtime.produces for runtime in runtimes))
    return f"consumes {', '.join(consumes) or 'nothing'} and produces {', '.join(produces)}"


def _from_stage(manifest: StepManifest, file: str, stage: Stage) -> StepManifest:
    """A stage step with the artifact types of its stage's runtime(s) and the manifest's descriptions."""
    runtimes = step_runtimes(stage, manifest.step.backend)
    where = f"stage {stage.id}" + (f" (backend {manifest.step.backend})" if manifest.step.backend else "")
    # Declared once: the stage's neighbours rely on these types, so a manifest may not restate them.
    for section, refs in (("consumes", manifest.consumes), ("produces", manifest.produces)):
        if refs:
            raise ConfigError(
                f"a stage step's artifact types are its stage's: {where} {_stage_types(stage, runtimes)} "
                f"(tasks/stages.py); describe them under [inputs] and [output] instead of [[{section}]]",
                file=file,
                section=section,
            )
    pairs = list(dict.fromkeys(pair for runtime in runtimes for pair in runtime.consumes))
    names = list(dict.fromkeys(name for name, _ in pairs))
    for name in manifest.inputs:
        if name not in names:
            raise ConfigError(
                f"{where} has no input {name!r}",
                file=file,
                section="inputs",
                key=name,
                hint=did_you_mean(name, names) or (f"inputs: {', '.join(names)}" if names else "it consumes nothing"),
            )
    consumes = tuple(
        ArtifactRef(type=kind, description=manifest.inputs.get(name, ""), input=name, required=name not in stage.optional)
        for name, kind in pairs
    )
    described = manifest.output.description if manifest.output else ""
    produces = tuple(
        ArtifactRef(type=kind, description=described) for kind in dict.fromkeys(runtime.produces for runtime in runtimes)
    )
    return manifest.model_copy(update={"consumes": consumes, "produces": produces})


def _check_links(manifest: StepManifest, file: str, relative_id: str) -> StepManifest:
    """The manifest's id, tool and stage checked; a stage step's types filled in from its stage."""
    info = manifest.step
    if info.id != relative_id:
        raise ConfigError(f"id {info.id!r} does not match the manifest's folder {relative_id!r}", file=file, section="step", key="id")
    if info.tool is not None and info.tool not in TOOLS:
        raise ConfigError(f"unknown tool {info.tool!r}", file=file, section="step", key="tool", hint=f"tools: {', '.join(TOOLS)}")
    stage = _stage_of(manifest, file) if info.stage is not None else None
    if stage is None or not manifest.types_from_stage:
        _check_own_types(manifest, file)
        return manifest
    return _from_stage(manifest, file, stage)


def load_manifest(path: Path, root: Path = CATALOG_ROOT) -> StepManifest:
    """One step.toml, validated; every problem is a ConfigError naming the file and the key."""
    file = str(path)
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"malformed TOML: {exc}", file=file) from None
    try:
        manifest = StepManifest.model_validate({**data, "folder": path.parent})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        section = loc[0] if loc else None
        key = ".".join(p for p in loc[1:] if not p.isdigit()) or None
        raise ConfigError(first["msg"].removeprefix("Value error, "), file=file, section=section, key=key) from None
    return _check_links(manifest, file, path.parent.relative_to(root).as_posix())


@cache
def load_catalog(root: Path = CATALOG_ROOT) -> tuple[StepManifest, ...]:
    """Every manifest under `root`, ordered by category then id."""
    manifests = [load_manifest(path, root) for path in sorted(root.rglob(MANIFEST_NAME))]
    seen: dict[str, Path] = {}
    for manifest in manifests:
        if manifest.id in seen:
            raise ConfigError(f"step id {manifest.id!r} is declared twice", file=str(manifest.folder / MANIFEST_NAME))
        seen[manifest.id] = manifest.folder
    return tuple(sorted(manifests, key=lambda m: (m.step.category, m.id)))


def find_step(step_id: str, root: Path = CATALOG_ROOT) -> StepManifest:
    """A step by id; an unknown id is an error with the closest match and where to look."""
    catalog = {m.id: m for m in load_catalog(root)}
    if step_id in catalog:
        return catalog[step_id]
    raise ConfigError(
        f"unknown step '{step_id}'",
        file=COMMAND_LINE,
        hint=did_you_mean(step_id, catalog) or "`nemotron steps list` shows every step",
    )


def check_artifact_type(kind: str, option: str) -> str:
    """A --produces/--consumes value: a typo must not silently match nothing."""
    if kind not in ARTIFACT_TYPES:
        raise ConfigError(
            f"unknown artifact type '{kind}'",
            file=COMMAND_LINE,
            key=option,
            hint=did_you_mean(kind, ARTIFACT_TYPES) or f"types: {', '.join(ARTIFACT_TYPES)}",
        )
    return kind


def runnable_alternative(manifest: StepManifest, root: Path = CATALOG_ROOT) -> StepManifest | None:
    """The step that runs the same stage here, for a step that cannot run."""
    for other in load_catalog(root):
        if other.runnable and other.step.stage == manifest.step.stage and other.id != manifest.id:
            return other
    return None

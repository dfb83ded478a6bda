"""The seeds' global options (-c, -r, -b, -d, key=value overrides) and what they resolve to.

Shared by `python -m flows.nano3` and the `nemotron` CLI so both read a command line the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from blocks.env_toml import EnvFile, discover_env_file
from blocks.errors import ConfigError, did_you_mean
from blocks.profile_lookup import (
    ResolvedProfile,
    check_reserved_sections,
    resolve_artifacts,
    resolve_profile,
    resolve_wandb,
)
from blocks.profiles import LocalProfile
from blocks.settings import ArtifactsConfig, WandbConfig
from tasks.refs import follows_run, ref_name
from tasks.job_config import COMMAND_LINE, JobConfig, Override, _has_key, build_job_config, find_config_file, load_yaml, parse_overrides
from tasks.stages import Stage

if TYPE_CHECKING:
    from tasks.artifacts import ArtifactStore

LOCAL = "local"


@dataclass(frozen=True)
class RunOptions:
    config: str = "tiny"
    run: str | None = None
    batch: str | None = None
    dry_run: bool = False
    overrides: tuple[str, ...] = field(default_factory=tuple)
    #: Stages running at once; None: flows.stage_graph.parallelism's default for the profile.
    max_parallel: int | None = None

    def __post_init__(self) -> None:
        if self.run and self.batch:
            raise ConfigError("--run and --batch exclude each other: pick attached or detached", file=COMMAND_LINE)

    @property
    def profile_name(self) -> str:
        return self.run or self.batch or LOCAL

    @property
    def detached(self) -> bool:
        return self.batch is not None


@dataclass(frozen=True)
class RunContext:
    options: RunOptions
    profile: ResolvedProfile
    wandb: WandbConfig | None
    artifacts: ArtifactsConfig | None
    overrides: tuple[Override, ...]


def resolve_context(options: RunOptions) -> RunContext:
    """Find env.toml, pick the profile (env.toml section, else block), parse the overrides."""
    overrides = tuple(parse_overrides(options.overrides))
    env: EnvFile | None = discover_env_file()
    if env is not None:
        check_reserved_sections(env)
    if options.profile_name == LOCAL and not (env is not None and env.has_profile(LOCAL)):
        # This machine needs no profile; an env.toml [local] section (or a block) only tunes it.
        try:
            profile = resolve_profile(LOCAL, env)
        except ConfigError:
            profile = ResolvedProfile(LOCAL, LocalProfile(), "built-in")
    else:
        profile = resolve_profile(options.profile_name, env)
    return RunContext(
        options=options,
        profile=profile,
        wandb=resolve_wandb(env, profile),
        artifacts=resolve_artifacts(env, profile),
        overrides=overrides,
    )


def stage_jobs(context: RunContext, stages: Sequence[Stage]) -> list[JobConfig]:
    """One job config per stage. A recipe override applies to every stage whose YAML has the key;
    a key that no selected stage has is an error (a typo must not vanish silently)."""
    recipe_keys = [o for o in context.overrides if not o.key.startswith("run.env.")]
    loaded = {stage.id: load_yaml(find_config_file(stage, context.options.config)) for stage in stages}
    by_id = {stage.id: stage for stage in stages}
    for override in context.overrides:
        if override.stage is not None and override.stage not in by_id:
            raise ConfigError(
                f"override for stage '{override.stage}', which this run does not include",
                file=COMMAND_LINE,
                key=f"{override.stage}:{override.key}",
                hint=did_you_mean(override.stage, by_id) or f"stages: {', '.join(by_id)}",
            )
    for override in recipe_keys:
        if override.stage is not None:
            continue  # build_job_config checks it against that stage's YAML
        if not any(_has_key(cfg, override.key) for cfg in loaded.values()):
            # Let the first stage produce the precise error (file, key, closest match).
            build_job_config(
                stages[0],
                context.options.config,
                profile=context.profile.profile,
                profile_name=context.profile.name,
                profile_origin=context.profile.origin,
                explicit_fields=context.profile.explicit,
                profile_sections=context.profile.sections,
                overrides=[override],
            )
    jobs = []
    for stage in stages:
        mine = [
            o
            for o in context.overrides
            if o.stage == stage.id
            or (o.stage is None and (o.key.startswith("run.env.") or _has_key(loaded[stage.id], o.key)))
        ]
        jobs.append(
            build_job_config(
                stage,
                context.options.config,
                profile=context.profile.profile,
                profile_name=context.profile.name,
                profile_origin=context.profile.origin,
                explicit_fields=context.profile.explicit,
                profile_sections=context.profile.sections,
                overrides=mine,
                wandb=context.wandb,
                loaded=loaded[stage.id],
            )
        )
    check_artifact_types(jobs)
    return jobs


@dataclass(frozen=True)
class ResolvedRun:
    """A command line resolved once: the profile, [wandb], [artifacts] and every stage's job."""

    context: RunContext
    jobs: tuple[JobConfig, ...]


def resolve_run(options: RunOptions, stages: Sequence[Stage]) -> ResolvedRun:
    context = resolve_context(options)
    return ResolvedRun(context, tuple(stage_jobs(context, stages)))


#: Runs the command resolved (to check inputs before Prefect starts) and hands to the flow it
#: calls next in this process, so the flow does not resolve them again. Taken once: a later
#: call with the same options (a served deployment, a second run) resolves afresh and sees
#: every change to env.toml, the YAMLs and the blocks.
_HANDED_OVER: dict[tuple[RunOptions, tuple[str, ...]], ResolvedRun] = {}


def _handover_key(options: RunOptions, stages: Sequence[Stage]) -> tuple[RunOptions, tuple[str, ...]]:
    return replace(options, dry_run=False), tuple(stage.id for stage in stages)


def hand_over(options: RunOptions, stages: Sequence[Stage], resolved: ResolvedRun) -> None:
    _HANDED_OVER.clear()
    _HANDED_OVER[_handover_key(options, stages)] = resolved


def take_resolved(options: RunOptions, stages: Sequence[Stage]) -> ResolvedRun:
    """What the command handed over for exactly these options and stages, else a fresh resolution."""
    return _HANDED_OVER.pop(_handover_key(options, stages), None) or resolve_run(options, stages)


def check_artifact_types(jobs: Sequence[JobConfig]) -> None:
    """An input made by an earlier stage of this run has the type the consumer's backend reads:
    a megatron pretrain's checkpoint_megatron cannot feed an hf SFT (mixing backends needs a convert)."""
    for job in jobs:
        wanted = dict(job.stage.consumes)
        for key, producer in made_in_run(jobs, job).items():
            if producer.stage.produces == wanted[key]:
                continue
            raise ConfigError(
                f"stage {job.stage.id} (backend {job.stage.backend}) reads {wanted[key]} from run.{key}, but "
                f"{producer.stage.id} (backend {producer.stage.backend}) makes {producer.stage.artifact} a {producer.stage.produces}",
                file=str(job.config_file),
                key=f"run.{key}",
                hint="run both stages on the same backend (run.backend), or point the input at a matching artifact",
            )


@dataclass(frozen=True)
class InputRef:
    """One input of a job: the key of its config's `run:` block (`data`), the artifact that key
    names (`nano3-sft-data`) and the reference as written (`nano3-sft-data:latest`)."""

    key: str
    artifact: str
    ref: str

    @property
    def follows_run(self) -> bool:
        """Takes the version a stage of the same run makes (tasks.refs.follows_run)."""
        return follows_run(self.ref)


def input_refs(job: JobConfig) -> list[InputRef]:
    """The inputs the job's config names: `run.data: nano3-sft-data:latest` → nano3-sft-data."""
    run_block = job.recipe_config.get("run") or {}
    found = []
    for key, _ in job.stage.consumes:
        ref = str(run_block.get(key) or "")
        if ref:
            found.append(InputRef(key, ref_name(ref), ref))
    return found


def made_in_run(jobs: Sequence[JobConfig], job: JobConfig) -> dict[str, JobConfig]:
    """Input key of `job` → the job of `jobs` that makes what it reads (its latest version)."""
    producers = {other.stage.artifact: other for other in jobs if other is not job}
    return {item.key: producers[item.artifact] for item in input_refs(job)
            if item.follows_run and item.artifact in producers}


def check_inputs(jobs: Sequence[JobConfig], store: ArtifactStore) -> None:
    """Every input is made by a stage of this run (made_in_run) or published, of the type the stage
    consumes, and intact (ArtifactStore.check_input: digests, JSONL records). A bad one stops the
    command here, before Prefect starts a flow or a scheduler gets a job that cannot start."""
    from flows.commands.options import command_for
    from tasks.artifacts import ArtifactError
    from tasks.data_sources import check as check_source
    from tasks.data_sources import data_sources
    from tasks.gate import gate_config
    from tasks.stages import STAGES

    producers = {stage.artifact: stage for stage in STAGES}
    for job in jobs:
        kinds = dict(job.stage.consumes)
        made = made_in_run(jobs, job)
        for item in input_refs(job):
            if item.key in made:
                continue
            producer = producers.get(item.artifact)
            where = dict(file=str(job.config_file), key=f"run.{item.key}")
            try:
                if job.stage.may_be_absent(item.key):
                    found = store.find(item.ref, expected_type=kinds[item.key])
                    if found is None:
                        continue
                    version = found
                else:
                    version = store.resolve(item.ref, expected_type=kinds[item.key])
            except ConfigError as exc:
                raise ConfigError(exc.message, **where, hint=exc.hint) from None
            except ArtifactError as exc:
                raise ConfigError(
                    f"stage {job.stage.id} needs {item.ref}: {exc}",
                    **where,
                    hint=f"`{command_for(producer)}` publishes it" if producer else None,
                ) from None
            try:
                store.check_input(version)
            except ArtifactError as exc:
                raise ConfigError(
                    f"stage {job.stage.id} cannot use {version.ref}: {exc}",
                    **where,
                    hint=f"remove {version.uri} and run `{command_for(producer)}` to make it again" if producer
                    else "publish a good version and point the config at it",
                ) from None
        for source in data_sources(job, store):
            check_source(source, store, hashed=False)
        gate_config(job.recipe_config.get("run"), str(job.config_file), job.stage.consumes)

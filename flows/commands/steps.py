"""`nemotron steps list|show|run`: the steps catalog (tasks/steps/*/step.toml) on the command line.

`list` and `show` read manifests only (no NeMo-Run, no Prefect). `run` resolves the step, checks
its config, then either runs its stage through flows.nano3.run_stages, exactly as the matching
`nemotron nano3 …` command does, or runs its tool here (env/env_toml writes an env.toml).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from blocks.errors import ConfigError, did_you_mean
from flows.commands.errors import COMMAND_LINE, set_verbose, user_errors
from flows.commands.options import (
    OVERRIDES,
    BatchOption,
    ConfigOption,
    DryRunOption,
    RunOption,
    VerboseOption,
)

steps_app = typer.Typer(no_args_is_help=True, help="The steps catalog: list, show and run steps by id.")


def _as_dict(manifest: Any) -> dict[str, Any]:
    return {
        "id": manifest.id,
        "name": manifest.step.name,
        "category": manifest.step.category,
        "description": manifest.step.description,
        "tags": list(manifest.step.tags),
        "stage": manifest.step.stage,
        "backend": manifest.step.backend,
        "tool": manifest.step.tool,
        "runnable": manifest.runnable,
        "requires": manifest.step.requires,
        "consumes": [r.model_dump(exclude_none=True) for r in manifest.consumes],
        "produces": [r.model_dump(exclude_none=True) for r in manifest.produces],
        "configs": list(manifest.step.configs),
        "default_config": manifest.step.default_config,
        "parameters": [p.model_dump() for p in manifest.parameters],
    }


@steps_app.command("list")
@user_errors
def list_steps(
    produces: Annotated[str | None, typer.Option("--produces", metavar="TYPE", help="Only steps that produce this artifact type.")] = None,
    consumes: Annotated[str | None, typer.Option("--consumes", metavar="TYPE", help="Only steps that consume this artifact type.")] = None,
    category: Annotated[str | None, typer.Option("--category", help="Only steps of this category (data_prep, pretrain, …).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array instead of the table.")] = False,
) -> None:
    """List the steps, optionally those that produce or consume an artifact type."""
    from flows.summary import wide_console
    from tasks.step_catalog import check_artifact_type, load_catalog

    catalog = load_catalog()
    if produces:
        check_artifact_type(produces, "--produces")
    if consumes:
        check_artifact_type(consumes, "--consumes")
    categories = sorted({m.step.category for m in catalog})
    if category and category not in categories:
        raise ConfigError(
            f"unknown category '{category}'",
            file=COMMAND_LINE,
            key="--category",
            hint=did_you_mean(category, categories) or f"categories: {', '.join(categories)}",
        )
    steps = [
        m
        for m in catalog
        if (not produces or produces in m.produced_types())
        and (not consumes or consumes in m.consumed_types())
        and (not category or m.step.category == category)
    ]
    if as_json:
        print(json.dumps([_as_dict(m) for m in steps], indent=2))
        return
    if not steps:
        print("no step matches")
        return
    from rich import box
    from rich.table import Table

    rows = []
    for m in steps:
        if not m.runnable:
            here = f"no: needs {m.step.requires}"
        else:
            here = f"stage {m.step.stage}" if m.step.stage else "this machine"
        rows.append([m.id, "\n".join(sorted(m.consumed_types())) or "-", "\n".join(sorted(m.produced_types())), here])
    headers = ("step", "consumes", "produces", "runs here")
    widths = [max(len(h), *(len(line) for row in rows for line in row[i].splitlines())) for i, h in enumerate(headers)]
    out = wide_console()
    # The description is what gives way to a narrow terminal, never the ids or the types.
    room = out.width - sum(widths) - 2 * (len(headers) + 1) - 2
    table = Table(title="nano3 steps", box=box.SIMPLE_HEAD, title_justify="left")
    for header, width in zip(headers, widths, strict=True):
        table.add_column(header, no_wrap=True, min_width=width, style="cyan" if header == "step" else None)
    if room >= 20:
        table.add_column("description", no_wrap=True, overflow="ellipsis", max_width=room)
    for m, row in zip(steps, rows, strict=True):
        table.add_row(*row, *([m.summary] if room >= 20 else []))
    out.print(table)


def _config_values(manifest: Any) -> dict[str, Any]:
    """Each parameter's value in the default config, read from the YAML (the one source of it)."""
    from omegaconf import OmegaConf

    path = manifest.config_path(manifest.step.default_config)
    if not path.is_file():
        return {}
    cfg = OmegaConf.load(path)
    values = {p.name: OmegaConf.select(cfg, p.name, default=None) for p in manifest.parameters}
    return {k: OmegaConf.to_container(v, resolve=False) if OmegaConf.is_config(v) else v for k, v in values.items()}


def _shown(value: Any) -> str:
    """A parameter's value in one short piece: a mapping by its keys, YAML spelling for the rest."""
    if isinstance(value, dict):
        return "{" + ", ".join(str(k) for k in value) + "}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@steps_app.command("show")
@user_errors
def show_step(
    step_id: Annotated[str, typer.Argument(metavar="ID", help="Step id, e.g. pretrain/transformers.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
) -> None:
    """Show a step: description, how it runs here, what it consumes and produces, configs, parameters."""
    from rich.markup import escape

    from flows.summary import wide_console
    from tasks.step_catalog import find_step, runnable_alternative

    manifest = find_step(step_id)
    values = _config_values(manifest)
    if as_json:
        data = _as_dict(manifest)
        for param in data["parameters"]:
            param["value"] = values.get(param["name"])
        print(json.dumps(data, indent=2, default=str))
        return
    info, out = manifest.step, wide_console()
    out.rule(f"[bold cyan]{manifest.id}[/bold cyan] — {escape(info.name)}")
    out.print(escape(info.description))
    out.print()
    if not manifest.runnable:
        alternative = runnable_alternative(manifest)
        instead = f"; here, use {alternative.id}" if alternative else ""
        out.print(f"[bold]Runs here[/bold]  no: needs {escape(info.requires or '')}{instead}")
    elif manifest.stage is not None:
        stage = manifest.stage
        backend = f", backend {info.backend}" if info.backend else ""
        out.print(f"[bold]Runs as[/bold]    stage {stage.id}: {stage.script_relpath} ({stage.launcher}{backend})")
    else:
        out.print("[bold]Runs as[/bold]    a tool on this machine (no job)")
    for title, refs in (("Consumes", manifest.consumes), ("Produces", manifest.produces)):
        out.print(f"[bold]{title}[/bold]")
        for ref in refs:
            optional = "" if ref.required else " (optional)"
            described = f" — {escape(ref.description)}" if ref.description else ""
            out.print(f"  • [green]{ref.type}[/green]{optional}{described}")
        if not refs:
            out.print("  nothing")
    configs = ", ".join(f"{c} (default)" if c == info.default_config else c for c in info.configs)
    out.print(f"[bold]Configs[/bold]    {configs}   [dim]{manifest.config_dir}[/dim]")
    out.print("[bold]Parameters[/bold] (override with name=value)")
    for param in manifest.parameters:
        value = values.get(param.name)
        shown = "" if value is None else f" = {escape(_shown(value))}"
        out.print(f"  • [yellow]{param.name}[/yellow]{shown} — {escape(param.description)}")
    if manifest.runnable:
        target = "" if info.tool else " [-r|-b PROFILE]"
        usage = f"nemotron steps run {manifest.id} -c {info.default_config}{target} [-d] [key=value …]"
        out.print(f"\n[dim]{escape(usage)}[/dim]")


def _check_config(manifest: Any, config: str) -> str:
    """A config the step lists, or a YAML path; a stage's other configs belong to other steps."""
    if "/" in config or config.endswith((".yaml", ".yml")):
        if not Path(config).expanduser().is_file():
            raise ConfigError(f"config file {config} does not exist", file=COMMAND_LINE, key="--config")
        return config
    if config in manifest.step.configs:
        return config
    from tasks.step_catalog import load_catalog

    owner = next(
        (m for m in load_catalog() if m.step.stage and m.step.stage == manifest.step.stage and config in m.step.configs),
        None,
    )
    hint = (
        f"config '{config}' is step {owner.id}'s (backend {owner.step.backend})"
        if owner
        else did_you_mean(config, manifest.step.configs) or f"configs: {', '.join(manifest.step.configs)}"
    )
    raise ConfigError(f"step '{manifest.id}' has no config named '{config}'", file=COMMAND_LINE, key="--config", hint=hint)


def run_env_toml(manifest: Any, config: str, run: str | None, batch: str | None, dry_run: bool, tokens: list[str]) -> None:
    """env/env_toml: render the template, validate it with the loader, write it here."""
    from blocks.env_toml_writer import write_env_toml
    from tasks.job_config import parse_overrides

    if run or batch:
        raise ConfigError(
            f"{manifest.id} writes a file on this machine; it takes no profile",
            file=COMMAND_LINE,
            key="--run" if run else "--batch",
            hint=f"nemotron steps run {manifest.id} -c {config}",
        )
    overrides = parse_overrides(tokens)
    scoped = next((o for o in overrides if o.stage is not None), None)
    if scoped is not None:
        raise ConfigError(f"override {scoped.stage}:{scoped.token} names a stage; this step has none", file=COMMAND_LINE)
    template = Path(config).expanduser() if "/" in config or config.endswith((".yaml", ".yml")) else manifest.config_path(config)
    result = write_env_toml(template, [(o.key, o.value) for o in overrides], dry_run=dry_run)
    profiles = ", ".join(f"{name} ({executor})" for name, executor in result.profiles)
    if dry_run:
        refused = "; it exists, so a run without force=true keeps it" if result.would_refuse else ""
        print(f"# {result.path} (dry-run: not written{refused}; profiles {profiles})")
        print(result.text, end="")
        return
    print(f"wrote {result.path}: profiles {profiles}")
    print(f"use it: export NEMOTRON_ENV_FILE={result.path}   then   nemotron profiles list")


#: What each `tool` of the catalog runs (tasks.step_catalog.TOOLS).
TOOL_RUNNERS: dict[str, Callable[..., None]] = {"env_toml": run_env_toml}


@steps_app.command("run", context_settings=OVERRIDES)
@user_errors
def run_step(
    ctx: typer.Context,
    step_id: Annotated[str, typer.Argument(metavar="ID", help="Step id, e.g. data_prep/pretrain_prep.")],
    config: ConfigOption = None,
    run: RunOption = None,
    batch: BatchOption = None,
    dry_run: DryRunOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run a step: its stage as a Prefect flow (attached, detached or here), or its tool.

    Trailing key=value arguments override the step's config; -c defaults to the step's default config.
    """
    from tasks.step_catalog import find_step, runnable_alternative

    set_verbose(verbose)
    manifest = find_step(step_id)
    if not manifest.runnable:
        alternative = runnable_alternative(manifest)
        raise ConfigError(
            f"step '{manifest.id}' cannot run here: it needs {manifest.step.requires}, whose backend-megatron "
            "scripts this project does not ship",
            file=COMMAND_LINE,
            hint=f"step {alternative.id} runs the same stage here" if alternative else None,
        )
    config = _check_config(manifest, config or manifest.step.default_config)
    if manifest.step.tool is not None:
        TOOL_RUNNERS[manifest.step.tool](manifest, config, run, batch, dry_run, list(ctx.args))
        return
    from flows.nano3 import make_options, run_stages, stage_flow_name

    stages = [manifest.stage]
    run_stages(make_options(config, run, batch, dry_run, list(ctx.args)), stages, stage_flow_name(stages))

"""`nemotron data add|status`: the data sources the pipeline reads its raw documents from.

`add` copies shards into a stage's source (the folder or URL its config names, under the artifact
store for a relative path) and tells Prefect (`nano3.data.arrived`), which starts the retraining
deployment's triggered run; `status` says, for each source, whether it holds data that its stage
has not been run on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands.errors import user_errors
from flows.commands.options import OVERRIDES, ConfigOption

data_app = typer.Typer(no_args_is_help=True, help="The data sources stages read (new shards start a retraining).")

StageOption = Annotated[str, typer.Option("--stage", "-s", help="The stage whose source to use.")]


def _resolved(config: str, stage_id: str | None, overrides: list[str]):  # noqa: ANN202 - (jobs, store)
    from flows.nano3 import make_options, select_stages
    from flows.run_options import resolve_run
    from tasks.artifacts import open_store
    from tasks.stages import STAGES

    stages = select_stages(stage_id) if stage_id else [stage for stage in STAGES if stage.sources]
    resolved = resolve_run(make_options(config, None, None, False, overrides), stages)
    return resolved.jobs, open_store(resolved.context.artifacts)


@data_app.command("add", context_settings=OVERRIDES)
@user_errors
def add(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(
        help="Shards (*.jsonl, *.parquet, *.txt) or folders of them, then any key=value overrides of the config.")],
    config: ConfigOption = "tiny",
    stage: StageOption = "data_prep/pretrain",
) -> None:
    """Copy shards into the stage's data source and announce them."""
    from blocks.errors import ConfigError
    from recipes.nano3.data_prep import sources
    from tasks import data_sources
    from tasks.data_arrivals import announce, states
    from tasks.job_config import COMMAND_LINE

    # key=value tokens after the paths are the config's overrides (corpus.path=…), as for a run.
    overrides = [str(p) for p in paths if "=" in str(p) and not p.exists()]
    paths = [p for p in paths if str(p) not in overrides]
    jobs, store = _resolved(config, stage, [*overrides, *ctx.args])
    found = data_sources.data_sources(jobs[0], store)
    if not found:
        raise ConfigError(f"stage {stage} reads no `files` data source in config {config}", file=COMMAND_LINE, key="--stage")
    source = found[0]
    shards: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path} does not exist", file=COMMAND_LINE, key="PATHS")
        inside = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        picked = [p for p in inside if sources.is_shard_name(p.name)]
        if not picked:
            raise ConfigError(f"{path} holds no shard ({', '.join('*' + s for s in sources.SHARD_SUFFIXES)})",
                              file=COMMAND_LINE, key="PATHS")
        shards += picked
    fs, root = store._fs_path(source.url)
    try:
        sources.put_shards([str(shard) for shard in shards], root, fs)
    except sources.SourceError as exc:
        raise ConfigError(str(exc).replace(root, source.url), file=COMMAND_LINE, key="PATHS") from None
    print(f"added {len(shards)} shard{'s' if len(shards) != 1 else ''} to {source.url}")
    for state in states(jobs, store):
        announce(state, store, say=print)


@data_app.command("status", context_settings=OVERRIDES)
@user_errors
def status(ctx: typer.Context, config: ConfigOption = "tiny") -> None:
    """Each data source: its shards, its fingerprint, and whether its stage has run on it."""
    from rich.table import Table

    from flows.summary import wide_console
    from tasks.data_arrivals import states

    jobs, store = _resolved(config, None, ctx.args)
    table = Table(title="data sources")
    for column in ("stage", "section", "source", "shards", "fingerprint", "state"):
        table.add_column(column, overflow="fold")
    for state in states(jobs, store):
        short = state.fingerprint.removeprefix("sha256:")[:12] if state.fingerprint else "-"
        table.add_row(state.stage, state.section, state.url, str(state.shards), short, state.condition)
    wide_console().print(table)

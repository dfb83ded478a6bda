"""`nemotron data add|status|encode`: the data sources the pipeline reads its raw documents from,
and encoding a corpus apart from a run.

`add` copies shards into a stage's source (the folder or URL its config names, under the artifact
store for a relative path) and tells Prefect (`nano3.data.arrived`), which starts the retraining
deployment's triggered run; `status` says, for each source, whether it holds data that its stage
has not been run on. `encode` turns a JSON Lines corpus into megatron .bin/.idx with one Prefect
task per shard on Ray (flows/encode_shards.py).
"""

from __future__ import annotations

import contextlib
import sys
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


@data_app.command("encode")
@user_errors
def encode(
    input: Annotated[Path, typer.Argument(help='A JSON Lines corpus of {"text": ...}.')],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", "-t", help="A tokenizers JSON file, or a folder holding tokenizer.json.")],
    output_prefix: Annotated[str, typer.Option("--output-prefix", "-o", help="Writes <prefix>.bin and <prefix>.idx.")],
    shard_mb: Annotated[float, typer.Option("--shard-mb", help="Text per shard (one Prefect task each), MB.")] = 64.0,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="A Ray cluster (host:port); default: a Ray started on this machine for the run.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="CPUs of the Ray started here (default: all).")] = None,
    shard_dir: Annotated[Path | None, typer.Option("--shard-dir", help="Where shard files are kept (default: <prefix>.shards).")] = None,
    eos: Annotated[str, typer.Option("--eos", help="The token that ends every document.")] = "<eos>",
    bpe: Annotated[str, typer.Option("--bpe", help="auto: the fast BPE engine where proven to give HF tokenizers' ids; hf: HF tokenizers.")] = "auto",
) -> None:
    """Encode a corpus into megatron .bin/.idx, one Prefect task per shard on Ray; a rerun encodes only new shards."""
    from blocks.errors import ConfigError
    from flows.encode_shards import reporting_shards, run_encode
    from flows.progress import ProgressBars, ProgressUpdate
    from tasks.job_config import COMMAND_LINE

    if not input.is_file():
        raise ConfigError(f"no file {input}", file=COMMAND_LINE, key="INPUT")
    tokenizer_file = tokenizer / "tokenizer.json" if tokenizer.is_dir() else tokenizer
    if not tokenizer_file.is_file():
        raise ConfigError(f"no tokenizer file {tokenizer_file}", file=COMMAND_LINE, key="--tokenizer")
    if shard_mb <= 0:
        raise ConfigError(f"must be above 0, got {shard_mb}", file=COMMAND_LINE, key="--shard-mb")
    from recipes.nano3.data_prep.binidx import BPE_ENGINES

    if bpe not in BPE_ENGINES:
        raise ConfigError(f"must be one of {', '.join(BPE_ENGINES)}, got {bpe!r}", file=COMMAND_LINE, key="--bpe")
    if workers is not None and workers < 1:
        raise ConfigError(f"must be 1 or more, got {workers}", file=COMMAND_LINE, key="--workers")
    if ray_address and workers is not None:
        raise ConfigError("sets the CPUs of a Ray started here; a cluster given by --ray-address has its own",
                          file=COMMAND_LINE, key="--workers")
    from tokenizers import Tokenizer

    if Tokenizer.from_file(str(tokenizer_file)).token_to_id(eos) is None:
        raise ConfigError(f"the tokenizer {tokenizer_file} has no token {eos!r}", file=COMMAND_LINE, key="--eos")
    from blocks.prefect_server import use_local_server

    local = use_local_server()
    if local is not None:
        print(local.describe(), file=sys.stderr)
    bars = ProgressBars()
    with contextlib.ExitStack() as stack:
        if bars.console.is_terminal:
            stack.enter_context(bars)
            stack.enter_context(reporting_shards(lambda done, total: bars.update("shards", ProgressUpdate(done, total))))
        summary = run_encode(input, tokenizer_file, output_prefix, shard_mb=shard_mb, shard_dir=shard_dir,
                             ray_address=ray_address, workers=workers, eos=eos, bpe=bpe)
    print(summary.describe())

"""The `nemotron` command line. Fast paths import nothing heavy; errors are one line plus a hint.

    nemotron nano3 data prep pretrain|sft|rl    one stage each, as a Prefect flow
    nemotron nano3 pretrain|sft|rl|convert|eval
    nemotron nano3 pipe                         the whole pipeline
    nemotron steps list|show|run                the steps catalog
    nemotron runs list|status|logs|cancel       follow submissions
    nemotron models list|show|promote|rollback  the registry's models and their aliases (production)
    nemotron data add|status                    the data sources stages read; new shards start a retraining
    nemotron profiles list|show|push            env.toml ⇄ Prefect blocks

Each group lives in flows/commands/; command bodies import what they use, so `nemotron --help`
and `nemotron steps list` load neither NeMo-Run nor Prefect (docs/performance.md).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from blocks.errors import ConfigError
from flows.commands.errors import set_verbose, user_errors
from flows.commands.data import data_app
from flows.commands.models import models_app
from flows.commands.nano3 import nano3_app
from flows.commands.runs import runs_app
from flows.commands.steps import steps_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    help="nano3-flows: the Nemotron nano3 pipeline on Prefect and NeMo-Run.",
)
profiles_app = typer.Typer(no_args_is_help=True, help="Execution profiles: env.toml ⇄ Prefect blocks.")
app.add_typer(nano3_app, name="nano3")
app.add_typer(steps_app, name="steps")
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(profiles_app, name="profiles")

__all__ = ["app", "main", "user_errors"]


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")] = False) -> None:
    set_verbose(verbose)


def _env_file_or_fail(path: str | None):  # noqa: ANN202 - EnvFile, imported lazily
    from pathlib import Path

    from blocks.env_toml import discover_env_file, load_env_file

    env = load_env_file(Path(path)) if path else discover_env_file()
    if env is None:
        raise ConfigError("no env.toml found", hint="set NEMOTRON_ENV_FILE or create ./env.toml")
    return env


@profiles_app.command("list")
@user_errors
def profiles_list(
    blocks: Annotated[bool, typer.Option("--blocks", help="List the profiles stored as Prefect blocks.")] = False,
    env_file: Annotated[str | None, typer.Option("--env-file", help="env.toml to read (default: discovered).")] = None,
) -> None:
    """List the profiles of env.toml (or, with --blocks, of the Prefect server)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("profile", "executor", "source")
    invalid: list[ConfigError] = []
    if blocks:
        from blocks.profile_blocks import list_profile_blocks

        for block in list_profile_blocks():
            table.add_row(block.profile_name, block.profile.executor, f"block:{block._block_document_name}")
    else:
        from blocks.profiles import parse_profile

        env = _env_file_or_fail(env_file)
        from blocks.profile_lookup import check_reserved_sections

        check_reserved_sections(env)
        for name in env.profile_names:
            if env.is_base(name):
                table.add_row(name, "[dim](base for extends)[/dim]", str(env.path))
                continue
            try:
                profile = parse_profile(env.profile(name), file=str(env.path), section=name)
            except ConfigError as exc:
                invalid.append(exc)
                table.add_row(name, "[red]invalid[/red]", str(env.path))
                continue
            table.add_row(name, profile.executor, str(env.path))
    Console().print(table)
    for exc in invalid:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    if invalid:
        raise typer.Exit(2)


@profiles_app.command("show")
@user_errors
def profiles_show(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    env_file: Annotated[str | None, typer.Option("--env-file", help="env.toml to read (default: discovered).")] = None,
) -> None:
    """Show one resolved profile (env.toml first, then blocks), secrets redacted."""
    from pathlib import Path

    import yaml

    from blocks.env_toml import load_env_file
    from blocks.profile_lookup import resolve_profile

    resolved = resolve_profile(name, load_env_file(Path(env_file)) if env_file else True)
    data = resolved.profile.model_dump(mode="json")
    print(f"# {name} ({resolved.origin})")
    print(yaml.safe_dump(data, sort_keys=False).rstrip())


@profiles_app.command("push")
@user_errors
def profiles_push(
    env_file: Annotated[str | None, typer.Option("--env-file", help="env.toml to push (default: discovered).")] = None,
) -> None:
    """Save every profile of env.toml, fully resolved, as a Prefect block (plus the W&B and artifact settings)."""
    from blocks.profile_blocks import push_env_file

    env = _env_file_or_fail(env_file)
    names = push_env_file(env)
    for profile, block in zip(env.runnable_profiles(), names, strict=True):
        print(f"{profile} -> nano3-execution-profile/{block}")


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()

"""The `nemotron` command line. Fast paths import nothing heavy; errors are one line plus a hint."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any

import typer

from blocks.errors import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    help="nano3-flows: the Nemotron nano3 pipeline on Prefect and NeMo-Run.",
)
profiles_app = typer.Typer(no_args_is_help=True, help="Execution profiles: env.toml ⇄ Prefect blocks.")
app.add_typer(profiles_app, name="profiles")

_state = {"verbose": False}


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")] = False) -> None:
    _state["verbose"] = verbose


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ConfigError into `error: <file: [section] key: message (hint)>` and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            if _state["verbose"]:
                raise
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper


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
        from blocks.profile_blocks import check_reserved_sections

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
    from blocks.profile_blocks import resolve_profile

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

"""`nemotron models list|show|promote|rollback`: the registry's models and their aliases.

`latest` moves with every publish; `production` (or any alias given with --alias) moves only
through these commands or an evaluation gate, and keeps its history (tasks/aliases.py). The
store is the pipeline's (env.toml [artifacts], NANO3_ARTIFACTS_ROOT, or ./.nano3/artifacts).
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.commands.errors import user_errors
from flows.commands.runs import _store

models_app = typer.Typer(no_args_is_help=True, help="Models in the registry, and the aliases that name them (production).")

Alias = Annotated[str, typer.Option("--alias", "-a", help="The alias to move.")]
Reason = Annotated[str, typer.Option("--reason", "-m", help="Why, kept in the alias's history.")]


def _is_model(kind: str) -> bool:
    return kind.startswith("checkpoint")


@models_app.command("list")
@user_errors
def list_models(
    every: Annotated[bool, typer.Option("--all", help="Every artifact, not only models.")] = False,
) -> None:
    """Each model's latest version and its aliases."""
    from rich.table import Table

    from flows.summary import wide_console
    from tasks.aliases import aliases_of, artifact_names

    store = _store()
    table = Table(title=f"models ({store.url('_registry')})")
    for column in ("name", "type", "latest", "aliases"):
        table.add_column(column, overflow="fold")
    shown = 0
    for name in artifact_names(store):
        latest = store.latest(name)
        if latest is None or not (every or _is_model(latest.type)):
            continue
        aliases = ", ".join(f"{alias}={version}" for alias, version in aliases_of(store, name).items())
        table.add_row(name, latest.type, latest.version, aliases or "-")
        shown += 1
    wide_console().print(table if shown else f"no models in {store.url('_registry')} yet")


@models_app.command("show")
@user_errors
def show(name: Annotated[str, typer.Argument(help="A model's name, e.g. nano3-model-hf.")], alias: Alias = "production") -> None:
    """A model's versions (digest, metrics, when) and the history of one alias."""
    from rich.table import Table

    from flows.summary import wide_console
    from tasks.aliases import moves

    store = _store()
    latest = store.resolve(f"{name}:latest")
    history = moves(store, name, alias)
    target = history[-1].version if history else None
    versions = Table(title=f"{name} ({latest.type})")
    for column in ("version", "digest", "metrics", "created", "names"):
        versions.add_column(column, overflow="fold")
    for number in store._versions(name):
        version = store.version(name, f"v{number}")
        if version is None:
            continue
        names = [n for n, hit in (("latest", version.version == latest.version), (alias, version.version == target)) if hit]
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in version.metrics.items())
        versions.add_row(version.version, version.digest[:19] + "…", metrics or "-",
                         version.created.replace("T", " ").removesuffix("+00:00"), ", ".join(names) or "-")
    out = wide_console()
    out.print(versions)
    if not history:
        out.print(f"{alias}: names no version yet (`nemotron models promote {name}:vN`)")
        return
    moved = Table(title=f"{name}:{alias} history")
    for column in ("move", "action", "from", "to", "reason", "when"):
        moved.add_column(column, overflow="fold")
    for move in history:
        moved.add_row(str(move.number), move.action, move.previous or "-", move.version, move.reason or "-",
                      move.at.replace("T", " ").removesuffix("+00:00"))
    out.print(moved)


@models_app.command("promote")
@user_errors
def promote(
    ref: Annotated[str, typer.Argument(metavar="NAME:VERSION", help="The version to promote, e.g. nano3-model-hf:v3 or :latest.")],
    alias: Alias = "production",
    reason: Reason = "",
) -> None:
    """Point the alias at a version (its history keeps where it pointed before)."""
    from tasks import aliases

    move = aliases.promote(_store(), ref, alias=alias, reason=reason or "promoted by hand")
    print(f"{move.name}:{alias}: {move.previous or 'nothing'} → {move.version} (move {move.number})")


@models_app.command("rollback")
@user_errors
def rollback(
    name: Annotated[str, typer.Argument(help="The model whose alias goes back.")],
    alias: Alias = "production",
    reason: Reason = "",
) -> None:
    """Point the alias back at the version it named before its current one."""
    from tasks import aliases

    move = aliases.rollback(_store(), name, alias=alias, reason=reason or "rolled back by hand")
    print(f"{move.name}:{alias}: {move.previous} → {move.version} (rolled back, move {move.number})")

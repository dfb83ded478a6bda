"""Aliases beside `latest`: names such as `production` that move only when someone moves them
(a promotion, a rollback), with every move kept.

    <root>/_registry/<name>/aliases/<alias>/m<N>.json    move N: to which version, from which, why, when

A move file is created exclusively, as a version file is (tasks.artifacts): the newest move is
the alias's target, and two promoters that saw the same target cannot both move it: the second
gets AliasMoved and must look again. Promotions stack and rollbacks pop: replaying the moves in
order gives the alias's history, and a rollback goes to the version below the current one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from tasks.artifacts import ArtifactError, ArtifactStore, ArtifactVersion, _now

#: The alias the model in service carries.
PRODUCTION = "production"
#: An alias is a lower-case word that cannot be read as `latest` or a version number.
ALIAS_PATTERN = re.compile(r"^(?!latest$)(?!v\d+$)[a-z][a-z0-9_-]{0,40}$")


class AliasMoved(ArtifactError):
    """The alias moved between reading it and moving it."""


class AliasMove(BaseModel):
    name: str
    alias: str
    number: int
    action: Literal["promote", "rollback"]
    version: str
    digest: str
    previous: str | None
    reason: str = ""
    at: str


def check_alias(alias: str) -> str:
    if not ALIAS_PATTERN.fullmatch(alias):
        raise ArtifactError(f"'{alias}' is not an alias name (a lower-case word, not `latest` or `vN`)")
    return alias


def moves(store: ArtifactStore, name: str, alias: str = PRODUCTION) -> list[AliasMove]:
    """Every move of the alias, oldest first."""
    return [AliasMove.model_validate(data) for data in store.alias_moves(name, check_alias(alias))]


def stack(history: list[AliasMove]) -> list[str]:
    """The versions the alias has held, bottom first, its target on top: promotions push, rollbacks pop."""
    held: list[str] = []
    for move in history:
        if move.action == "promote":
            held.append(move.version)
        else:
            held.pop()
    return held


def current(store: ArtifactStore, name: str, alias: str = PRODUCTION) -> ArtifactVersion | None:
    """The version the alias names, or None while it names none."""
    history = moves(store, name, alias)
    return store.version(name, history[-1].version) if history else None


def aliases_of(store: ArtifactStore, name: str) -> dict[str, str]:
    """alias → version, for every alias of `name`."""
    folder = store._path("_registry", name, "aliases")
    store._fresh(folder)
    if not store.fs.exists(folder):
        return {}
    found = {}
    for entry in sorted(store.fs.ls(folder, detail=False)):
        alias = Path(entry).name
        if ALIAS_PATTERN.fullmatch(alias) and (history := moves(store, name, alias)):
            found[alias] = history[-1].version
    return found


def _move(store: ArtifactStore, history: list[AliasMove], target: ArtifactVersion, alias: str, *,
          action: Literal["promote", "rollback"], reason: str) -> AliasMove:
    """Write move N+1 of the alias, N being the last move the caller saw; AliasMoved if taken."""
    number = history[-1].number + 1 if history else 1
    move = AliasMove(
        name=target.name, alias=alias, number=number, action=action, version=target.version, digest=target.digest,
        previous=history[-1].version if history else None, reason=reason, at=_now(),
    )
    path = f"{store.alias_folder(target.name, alias)}/m{number}.json"
    if not store._create_exclusive(path, move.model_dump_json(indent=2)):
        raise AliasMoved(f"{target.name}:{alias} was moved meanwhile (move {number} exists); look again and retry")
    return move


def promote(store: ArtifactStore, ref: str, *, alias: str = PRODUCTION, reason: str = "",
            seen: int | None = None) -> AliasMove:
    """Point `alias` at the version `ref` names (`name:vN`, `name:latest`).

    `seen`: the move number the caller based its decision on (an evaluation gate compares with
    the alias's target, then promotes only if nobody moved it in between)."""
    target = store.resolve(ref)
    history = moves(store, target.name, check_alias(alias))
    if seen is not None and (history[-1].number if history else 0) != seen:
        raise AliasMoved(f"{target.name}:{alias} moved after move {seen}; compare again before promoting")
    return _move(store, history, target, alias, action="promote", reason=reason)


def rollback(store: ArtifactStore, name: str, *, alias: str = PRODUCTION, reason: str = "") -> AliasMove:
    """Point `alias` back at the version it held before its current one."""
    history = moves(store, name, check_alias(alias))
    held = stack(history)
    if len(held) < 2:
        now = f"it names {held[-1]}" if held else "it names nothing"
        raise ArtifactError(f"{name}:{alias} has no earlier version to roll back to ({now})")
    target = store.version(name, held[-2])
    if target is None:
        raise ArtifactError(f"{name}:{held[-2]} is no longer in the registry of {store.root}")
    return _move(store, history, target, alias, action="rollback", reason=reason)


def artifact_names(store: ArtifactStore) -> list[str]:
    """Every name in the registry."""
    folder = store._path("_registry")
    store._fresh(folder)
    if not store.fs.exists(folder):
        return []
    return sorted(Path(entry).name for entry in store.fs.ls(folder, detail=False))

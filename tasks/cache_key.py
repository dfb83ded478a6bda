"""The cache key of a stage: what it computes, not where it runs.

sha256 over the key scheme, the stage id, the digest of the code that runs, the resolved recipe
config without its where-to-run and bookkeeping fields, and the digests of the input artifacts.
Same key = same outputs: the stage is skipped, on any executor.

The code that runs is found, not listed: the stage's script (and `ray_cluster.py` where the
launcher starts Ray), then every module of the `recipes` package it imports, at any depth and
from anywhere in a file (a function-level import counts), plus the files the stage folder ships
besides Python (templates, task YAMLs). A change to a shared module therefore reruns exactly the
stages whose scripts import it. Configs stay out: the resolved config enters the key on its own.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks.stages import PROJECT_ROOT, RAY_CLUSTER_SCRIPT, Stage

#: Bumped whenever what enters a key changes, so that keys of the old scheme never match.
KEY_SCHEME = 2
#: run.* fields that say where or how to run, or are derived from the key itself.
NOT_IN_KEY = ("env", "wandb", "output_dir", "work_dir", "stage", "inputs", "sources", "gate")
#: Top-level packages whose modules travel with a job (files on disk under the project root).
CODE_PACKAGES = ("recipes",)


def _module_file(name: str, root: Path) -> Path | None:
    """The file a dotted module name loads from under root: `a/b.py` or a package's `a/b/__init__.py`."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.parent / f"{base.name}.py", base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_files(name: str, root: Path) -> list[Path]:
    """What importing `name` executes under root: each enclosing package's `__init__.py`, then the
    module itself. Empty for modules outside CODE_PACKAGES (third-party, stdlib, tests)."""
    parts = name.split(".")
    if parts[0] not in CODE_PACKAGES:
        return []
    found = (_module_file(".".join(parts[:depth]), root) for depth in range(1, len(parts) + 1))
    return [path for path in found if path is not None]


def _absolute_base(node: ast.ImportFrom, path: Path, root: Path) -> str | None:
    """The module a `from … import` names, with a relative one resolved against the file's folder."""
    if node.level == 0:
        return node.module
    package = path.parent
    for _ in range(node.level - 1):
        package = package.parent
    try:
        parts = list(package.relative_to(root).parts)
    except ValueError:
        return None
    parts += node.module.split(".") if node.module else []
    return ".".join(parts) or None


def _import_module_target(node: ast.Call) -> str | None:
    """`importlib.import_module("a.b")` with a literal name: an import too."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name != "import_module" or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imported_names(tree: ast.AST, path: Path, root: Path) -> Iterator[str]:
    """Every module name the file may import, anywhere in its AST; `from a import b` yields `a`
    and `a.b` (b may be a submodule: module_files finds out)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute_base(node, path, root)
            if base is None:
                continue
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and (target := _import_module_target(node)):
            yield target


@lru_cache(maxsize=1024)
def _parsed_imports(path: Path, root: Path, stamp: tuple[int, int]) -> tuple[str, ...]:
    """One parse per file version (mtime, size) per process: a dry-run keys every stage."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError:
        return ()  # its bytes still enter the key; the job reports the error
    return tuple(sorted(set(imported_names(tree, path, root))))


def _imports_of(path: Path, root: Path) -> tuple[str, ...]:
    stat = path.stat()
    return _parsed_imports(path, root, (stat.st_mtime_ns, stat.st_size))


def import_closure(entries: Iterable[Path], root: Path) -> set[Path]:
    """The entry files and every file under root that they import, transitively."""
    seen: set[Path] = set()
    todo = [path.resolve() for path in entries]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        if path.suffix == ".py":
            todo += [found for name in _imports_of(path, root) for found in module_files(name, root)]
    return seen


def entry_points(stage: Stage, root: Path = PROJECT_ROOT) -> list[Path]:
    """The files the job runs: its script, and on a `ray` launcher the script that starts Ray."""
    entries = [stage.script_path]
    if stage.launcher == "ray":
        entries.append(root / RAY_CLUSTER_SCRIPT)
    return entries


def stage_data_files(stage: Stage) -> list[Path]:
    """What the stage folder ships besides Python (templates, task YAMLs) that its script reads;
    config/ stays out: the resolved config enters the key on its own."""
    files = []
    for path in stage.recipe_dir.rglob("*"):
        relative = path.relative_to(stage.recipe_dir).parts
        if not path.is_file() or relative[0] == "config" or path.suffix in (".py", ".pyc"):
            continue
        if "__pycache__" in relative or any(part.startswith(".") for part in relative):
            continue
        files.append(path.resolve())
    return files


def stage_sources(stage: Stage, root: Path = PROJECT_ROOT) -> list[Path]:
    """The files whose bytes enter the stage's key, sorted: what a dry-run can show for a key."""
    root = root.resolve()
    return sorted(import_closure(entry_points(stage, root), root) | set(stage_data_files(stage)))


def _label(path: Path, root: Path) -> str:
    """A file's name in the digest: relative to the project, so keys do not depend on the checkout."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def recipe_digest(stage: Stage, root: Path = PROJECT_ROOT) -> str:
    """Digest of the code that runs: each source's project-relative name and bytes."""
    root = root.resolve()
    digest = hashlib.sha256()
    for path in stage_sources(stage, root):
        digest.update(_label(path, root).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def compute_cache_key(
    stage: Stage, recipe_config: dict[str, Any], input_digests: dict[str, str], root: Path = PROJECT_ROOT
) -> str:
    config = dict(recipe_config)
    config["run"] = {k: v for k, v in (config.get("run") or {}).items() if k not in NOT_IN_KEY}
    payload = {
        "scheme": KEY_SCHEME,
        "stage": stage.id,
        "recipe": recipe_digest(stage, root),
        "config": config,
        "inputs": dict(sorted(input_digests.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]

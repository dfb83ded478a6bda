"""The layers as docs/architecture.md draws them: imports point down, no module imports itself
back through others, and executor-specific behaviour stays in blocks/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from blocks.profiles import PROFILE_TYPES
from tasks.stages import PROJECT_ROOT

PACKAGES = ("blocks", "tasks", "flows", "deployments", "recipes")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (PROJECT_ROOT / package).rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports, at its top or inside functions (`from a import b`
    counts as `a.b` where that is a module)."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def test_imports_point_down() -> None:
    allowed = {"flows": {"flows", "tasks", "blocks", "recipes"}, "deployments": {"deployments", "flows", "tasks", "blocks", "recipes"},
               "tasks": {"tasks", "blocks", "recipes"}, "blocks": {"blocks", "recipes"}, "recipes": {"recipes"}}
    wrong = [
        f"{name} imports {target}"
        for name, targets in _graph().items()
        for target in targets
        if target.split(".")[0] not in allowed[name.split(".")[0]]
    ]
    assert wrong == []


def test_recipes_never_import_prefect() -> None:
    for path in (PROJECT_ROOT / "recipes").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] == "prefect"], path


def test_no_import_circles() -> None:
    graph = _graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package's __init__ and its modules import each other by Python's design; not a circle.
    circles = [c for c in circles if not all(m == c[0] or m.startswith(c[0] + ".") or c[0].startswith(m + ".") for m in c)]
    assert circles == []


#: What testing an executor by name looks like: its profile class, its kind, NeMo-Run's class name.
EXECUTOR_TEST = re.compile(
    r"isinstance\([^)]*\b(?:" + "|".join(cls.__name__ for cls in PROFILE_TYPES.values()) + r")\b"
    r"|\bexecutor\s*(?:==|!=|in)\s*[\"'(]"
    r"|[\"'](?:" + "|".join(PROFILE_TYPES) + r")[\"']\s*(?:==|!=|in)"
    r"|__name__\s*(?:==|!=)\s*[\"']\w+(?:Executor|Tunnel)[\"']"
)


def test_executor_specific_behaviour_stays_in_blocks() -> None:
    """Adding an executor is one model (blocks/profiles.py) and one builder (blocks/executors.py):
    nothing above blocks/ asks which executor a job has."""
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
        for package in ("tasks", "flows", "deployments")
        for path in (PROJECT_ROOT / package).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if EXECUTOR_TEST.search(line)
    ]
    assert offenders == []

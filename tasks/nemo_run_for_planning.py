"""NeMo-Run imported for a dry-run: only the executor modules the plan renders.

NeMo-Run's package `__init__` imports every executor and its command-line machinery, and its
experiment module (which renders the submission) imports every executor module itself: Lepton's
client alone is 0.5-1.6 s of a 2.5 s dry-run on 2 cores (docs/performance.md). A dry-run process
renders one or a few executor kinds, known before NeMo-Run is imported, so:

- `nemo_run` and `nemo_run.core.execution` are their real packages with their `__init__` not
  run: a name they export is imported on first use, from the module their `__init__` names.
- every other executor module NeMo-Run's experiment imports is a stand-in whose classes nothing
  is an instance of; using one (building, reading an attribute) raises `NotImportedForPlanning`.

- networkx, which NeMo-Run's experiment calls only to order the jobs of a multi-job experiment,
  is deferred (`importlib.util.LazyLoader`: executed on its first attribute access, so a plan
  that does need it still gets it).

NeMo-Run's own code renders the plan, byte for byte as with its full import
(tests/test_cli_imports.py compares both for every executor kind that plans here). Only a
dry-run process asks for this (flows.nano3.print_plan); anything else imports NeMo-Run whole
(tasks.nemo_run_import), and a process that imported it for planning refuses to submit.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from tasks.lean_imports import without
from tasks.nemo_run_import import PLANNING_ONLY, import_nemo_run, leave_experiment_logging_alone

EXECUTION = "nemo_run.core.execution"
#: The executor modules NeMo-Run's experiment, job and torchx schedulers import, whichever the executor.
STANDABLE = ("dgxcloud", "docker", "kubeflow", "lepton", "local", "skypilot", "skypilot_jobs", "slurm")
#: Executor kind (blocks.executors.BUILDERS) → the modules of STANDABLE its plan is rendered with.
#: kuberay's executor module is imported by its builder and by nothing else, so it is never stood in.
RENDERED_BY: dict[str, tuple[str, ...]] = {
    "local": ("local",),
    "docker": ("docker",),
    "slurm": ("slurm",),
    "dgxcloud": ("dgxcloud",),
    "lepton": ("lepton",),
    "skypilot": ("skypilot", "skypilot_jobs"),
    "kuberay": (),
}
#: Packages whose `__init__` imports every executor: their names are resolved on first use.
LAZY_PACKAGES = ("nemo_run", EXECUTION)
#: Modules of NeMo-Run's import chain that rendering a plan does not call: executed on first use.
DEFERRED = ("networkx",)


class NotImportedForPlanning(AttributeError):
    """A NeMo-Run executor this dry-run process did not import was used."""


class StandIn(type):
    """The class of a stand-in: nothing is an instance of it, and using it says why."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise NotImportedForPlanning(_refusal(f"{cls.__module__}.{cls.__name__}"))

    def __getattr__(cls, attr: str) -> Any:
        raise NotImportedForPlanning(_refusal(f"{cls.__module__}.{cls.__name__}.{attr}"))


def _refusal(what: str) -> str:
    return (f"{what} is not imported in this process: it imported NeMo-Run to plan "
            f"{', '.join(planned_kinds())} jobs only")


def planned_kinds() -> tuple[str, ...]:
    """The executor kinds this process imported NeMo-Run to plan; () when it did not."""
    return tuple(getattr(sys.modules.get("nemo_run"), PLANNING_ONLY, ()))


def _stand_in_module(name: str) -> ModuleType:
    module = ModuleType(name, f"Stand-in for {name}: {__name__} did not import it.")

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__") or not attr[:1].isupper():
            raise NotImportedForPlanning(_refusal(f"{name}.{attr}"))
        stand_in = StandIn(attr, (), {"__module__": name, "__qualname__": attr})
        setattr(module, attr, stand_in)  # one class per name: identity and isinstance hold
        return stand_in

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def package_exports(init: Path, package: str) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """What a package's `__init__` exports: name → (module, attribute; None for a submodule), and
    its `__all__`. Anything but imports and `__all__` in it means it cannot be read this way."""
    exports: dict[str, tuple[str, str | None]] = {}
    all_names: list[str] = []
    for node in ast.parse(init.read_text(), str(init)).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if node.module == package:
                    exports[alias.asname or alias.name] = (f"{package}.{alias.name}", None)
                else:
                    exports[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]:
            all_names = list(ast.literal_eval(node.value))
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # the docstring
            raise ImportError(f"{init}:{node.lineno}: a statement other than an import; {package} cannot be imported lazily")
    return exports, all_names


def _lazy_package(name: str) -> ModuleType:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"{name} is not installed")
    exports, all_names = package_exports(Path(spec.origin), name)
    package = importlib.util.module_from_spec(spec)  # its __path__ and spec, its __init__ not run

    def __getattr__(attr: str) -> Any:
        if attr not in exports:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        module, original = exports[attr]
        value = importlib.import_module(module)
        if original is not None:
            value = getattr(value, original)
        setattr(package, attr, value)
        return value

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    package.__all__ = all_names
    return package


class _DeferredFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of DEFERRED as the other finders do, with their loader made lazy."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in DEFERRED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def import_nemo_run_for_planning(kinds: Iterable[str]) -> Any:
    """NeMo-Run with the executor modules of `kinds` (and their imports) only, in a process that
    has not imported it yet; NeMo-Run as it is where it already has been."""
    wanted = tuple(sorted(set(kinds)))
    unknown = [kind for kind in wanted if kind not in RENDERED_BY]
    if unknown:
        raise ValueError(f"no NeMo-Run executor modules known for executor {unknown[0]!r} (known: {', '.join(RENDERED_BY)})")
    if "nemo_run" in sys.modules:
        return nemo_run_for_plan(*wanted)
    rendered = {module for kind in wanted for module in RENDERED_BY[kind]}
    for module in STANDABLE:
        if module not in rendered:
            sys.modules[f"{EXECUTION}.{module}"] = _stand_in_module(f"{EXECUTION}.{module}")
    for name in LAZY_PACKAGES:
        sys.modules[name] = _lazy_package(name)
    setattr(sys.modules["nemo_run"], PLANNING_ONLY, wanted)
    sys.meta_path.insert(0, _DeferredFinder())
    with without():
        experiment = importlib.import_module("nemo_run.run.experiment")
        for module in sorted(rendered):
            importlib.import_module(f"{EXECUTION}.{module}")
    leave_experiment_logging_alone(experiment)
    return sys.modules["nemo_run"]


def nemo_run_for_plan(kind: str, *more: str) -> Any:
    """NeMo-Run to plan jobs of these executor kinds: the planning import where this process made
    one (an error if it lacks a kind), else the whole of NeMo-Run."""
    planned = planned_kinds()
    if not planned:
        return import_nemo_run()
    missing = [k for k in (kind, *more) if k not in planned]
    if missing:
        raise NotImportedForPlanning(_refusal(f"the {missing[0]} executor"))
    return sys.modules["nemo_run"]

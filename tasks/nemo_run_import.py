"""NeMo-Run, imported the way the orchestrator needs it: without torch, and leaving logging alone."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from tasks.lean_imports import without

#: Set on the `nemo_run` module by tasks.nemo_run_for_planning: the executor kinds a dry-run
#: process imported it for. Such a process has stand-ins for the other executors.
PLANNING_ONLY = "__nano3_planning_only__"


def import_nemo_run() -> Any:
    """NeMo-Run for planning, submitting and following jobs.

    Without the torch it imports for a YAML representer of torch.dtype (1.8 s of a pipeline's
    first stage here): only what runs stages pays for it, not a rerun whose stages are all cached.

    And with its experiments leaving this process's logging as it is. A NeMo-Run Experiment
    configures logging as if it owned the process: its constructor calls
    `logging.basicConfig(force=True)`, replacing every root handler (Prefect's console handler
    among them) with a RichHandler of its own, and its `__del__` removes the first root handler,
    whichever that is by then. In a pipeline run, an experiment collected while a later stage's
    job ran took the console's handler with it: the console showed the job lines of 4 of its 8
    stages (Prefect's API handler still had them all). Here logging is Prefect's.
    """
    planned = getattr(sys.modules.get("nemo_run"), PLANNING_ONLY, ())
    if planned:
        raise RuntimeError(
            f"this process imported NeMo-Run to plan {', '.join(planned)} jobs only (a dry-run); "
            "submitting or following a job needs all of it"
        )
    with without():
        import nemo_run
    from nemo_run.run import experiment

    leave_experiment_logging_alone(experiment)
    return nemo_run


def leave_experiment_logging_alone(experiment: ModuleType) -> None:
    """NeMo-Run's experiment module configures no logging of this process (see import_nemo_run)."""
    experiment.configure_logging = _leave_logging_alone
    experiment.deconfigure_logging = _leave_logging_alone


def _leave_logging_alone(*args: Any, **kwargs: Any) -> None:
    """Stands in for NeMo-Run's configure_logging/deconfigure_logging in its experiment module."""

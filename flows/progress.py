"""Progress bars for long work, drawn from the job's own log lines.

Recipes print `NANO3_PROGRESS {"step": …, "total": …, <metrics>}` (recipes.nano3.runtime); while a
stage runs attached, the stage task turns each into a `step i/n metrics` log message
(tasks.stage_task.ProgressReporter). Both become one rich bar per stage here. Other lines print
above the bars. Bars are drawn only on a terminal; piped output keeps the plain log lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from recipes.nano3.runtime import PROGRESS_PREFIX

#: The stage task's message for a progress line: `step 20/330 loss=2.31, lr=0.002`.
STEP_MESSAGE = re.compile(r"^step (?P<step>\d+)/(?P<total>\d+)(?: (?P<metrics>.*))?$")
#: Keys of a progress line that are bookkeeping, not metrics.
NOT_METRICS = ("step", "total", "time")


@dataclass(frozen=True)
class ProgressUpdate:
    step: int
    total: int
    metrics: str = ""


def parse_progress(line: str) -> ProgressUpdate | None:
    """A recipe's progress line, or the stage task's message for one; None for any other line."""
    if line.startswith(PROGRESS_PREFIX):
        try:
            data: dict[str, Any] = json.loads(line[len(PROGRESS_PREFIX):])
            step, total = int(data["step"]), int(data["total"])
        except (ValueError, KeyError, TypeError):
            return None
        metrics = ", ".join(f"{k}={_short(v)}" for k, v in data.items() if k not in NOT_METRICS)
        return ProgressUpdate(step, total, metrics)
    match = STEP_MESSAGE.match(line)
    if match:
        return ProgressUpdate(int(match["step"]), int(match["total"]), match["metrics"] or "")
    return None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ProgressBars:
    """One bar per label (a stage), plus the lines that are not progress printed above them."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ProgressBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, label: str, update: ProgressUpdate) -> None:
        # A total of 0 means "unknown" (a corpus with no size cap): show the count alone.
        total = update.total or None
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total, label=label, metrics="")
        self.progress.update(self.tasks[label], completed=update.step, total=total, metrics=update.metrics)

    def feed(self, label: str, line: str) -> None:
        update = parse_progress(line)
        if update is None:
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            self.update(label, update)


class _NotStepMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return parse_progress(record.getMessage()) is None


class _ConsoleTakeover:
    """Root handlers that print to a rich console (Prefect's, and any added mid-run) print through
    the bars' console and skip progress messages; `restore` puts every one back as it was."""

    def __init__(self, bars: ProgressBars) -> None:
        self.bars = bars
        self.quiet = _NotStepMessages()
        self.taken: dict[logging.Handler, Console] = {}

    def adopt(self) -> None:
        for handler in logging.getLogger().handlers:
            if handler not in self.taken and isinstance(getattr(handler, "console", None), Console):
                self.taken[handler] = handler.console  # type: ignore[attr-defined]
                handler.console = self.bars.progress.console  # type: ignore[attr-defined]
                handler.addFilter(self.quiet)

    def restore(self) -> None:
        for handler, console in self.taken.items():
            handler.console = console  # type: ignore[attr-defined]
            handler.removeFilter(self.quiet)
        self.taken.clear()


class _StepMessages(logging.Handler):
    """Feeds the stage task's `step i/n` messages to the bars, labelled with the task run (the stage).

    It sits on the task-run logger, so it sees each record before the root handlers do: the
    moment to adopt a handler that appeared since the last record."""

    def __init__(self, bars: ProgressBars, takeover: _ConsoleTakeover) -> None:
        super().__init__()
        self.bars = bars
        self.takeover = takeover

    def emit(self, record: logging.LogRecord) -> None:
        self.takeover.adopt()
        update = parse_progress(record.getMessage())
        if update is not None:
            self.bars.update(str(getattr(record, "task_run_name", None) or "job"), update)


@contextlib.contextmanager
def stage_progress_bars(console: Console | None = None) -> Iterator[ProgressBars | None]:
    """While attached stages run: their progress messages become bars on a terminal, and the
    console log lines print above the bars instead of through them. Elsewhere, nothing changes."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    bars = ProgressBars(console)
    takeover = _ConsoleTakeover(bars)
    handler = _StepMessages(bars, takeover)
    task_runs = logging.getLogger("prefect.task_runs")
    takeover.adopt()
    task_runs.addHandler(handler)
    try:
        with bars:
            yield bars
    finally:
        task_runs.removeHandler(handler)
        takeover.restore()

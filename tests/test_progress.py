"""Progress bars from job logs: the recipes' progress lines and the stage task's step messages."""

from __future__ import annotations

import io
import json
import logging

import pytest
from rich.console import Console
from rich.logging import RichHandler

from flows.progress import ProgressBars, ProgressUpdate, parse_progress, stage_progress_bars
from recipes.nano3.runtime import PROGRESS_PREFIX


def terminal(buffer: io.StringIO) -> Console:
    return Console(file=buffer, force_terminal=True, width=100, color_system=None)


def test_parse_a_recipe_progress_line() -> None:
    line = PROGRESS_PREFIX + json.dumps({"step": 20, "total": 330, "time": 1.5, "loss": 2.3456789, "lr": 0.002})
    assert parse_progress(line) == ProgressUpdate(20, 330, "loss=2.346, lr=0.002")


def test_parse_the_stage_tasks_message() -> None:
    assert parse_progress("step 20/330 loss=2.31, lr=0.002") == ProgressUpdate(20, 330, "loss=2.31, lr=0.002")
    assert parse_progress("step 1/1") == ProgressUpdate(1, 1, "")


@pytest.mark.parametrize("line", ["stepping 1/2", "loss 2.3", PROGRESS_PREFIX + "{not json", PROGRESS_PREFIX + '{"step": 1}', ""])
def test_other_lines_are_not_progress(line: str) -> None:
    assert parse_progress(line) is None


def test_bars_render_progress_and_print_other_lines() -> None:
    buffer = io.StringIO()
    with ProgressBars(terminal(buffer)) as bars:
        bars.feed("pretrain", "loading data")
        bars.feed("pretrain", PROGRESS_PREFIX + json.dumps({"step": 165, "total": 330, "loss": 3.5}))
        bars.feed("sft", "step 10/400 exact_match=0.5")
    out = buffer.getvalue()
    assert "loading data" in out
    assert "pretrain" in out and "165/330" in out and "loss=3.5" in out
    assert "sft" in out and "10/400" in out
    assert PROGRESS_PREFIX not in out


def test_attached_runs_turn_step_messages_into_bars_and_restore_the_console() -> None:
    """Prefect's task-run logger carries `step i/n` messages; root console handlers (Prefect's, or
    the RichHandler NeMo-Run installs mid-run) print everything else above the bars."""
    buffer, original = io.StringIO(), io.StringIO()
    task_runs = logging.getLogger("prefect.task_runs")
    root = logging.getLogger()
    early = RichHandler(console=Console(file=original, width=100))
    root.addHandler(early)
    late = RichHandler(console=Console(file=original, width=100))
    old_level = task_runs.level
    task_runs.setLevel(logging.INFO)
    try:
        with stage_progress_bars(terminal(buffer)) as bars:
            assert bars is not None
            root.addHandler(late)  # appears mid-run, as NeMo-Run's does
            task_runs.info("submitting through local", extra={"task_run_name": "data_prep/sft"})
            task_runs.info("step 7/10 loss=1.5", extra={"task_run_name": "data_prep/sft"})
            assert late.console is bars.progress.console and early.console is bars.progress.console
        assert "submitting through local" in buffer.getvalue()
        assert "7/10" in buffer.getvalue() and "data_prep/sft" in buffer.getvalue()
        assert "step 7/10" not in buffer.getvalue() and original.getvalue() == ""
        assert early.console.file is original and late.console.file is original and not early.filters
        assert not any(type(h).__name__ == "_StepMessages" for h in task_runs.handlers)
    finally:
        root.removeHandler(early)
        root.removeHandler(late)
        task_runs.setLevel(old_level)


def test_no_bars_when_not_a_terminal() -> None:
    with stage_progress_bars(Console(file=io.StringIO())) as bars:
        assert bars is None


def test_the_stage_tasks_message_is_what_the_bars_read() -> None:
    """The attached bars read the stage task's log messages: pin the two formats together."""
    from types import SimpleNamespace

    from tasks.stage_task import ProgressReporter

    messages: list[str] = []
    reporter = object.__new__(ProgressReporter)  # without a Prefect run: no logger, no artifact to create
    reporter.stage_id, reporter.artifact_id, reporter.last_percent = "pretrain", "artifact-id", 30.0
    reporter.logger = SimpleNamespace(info=messages.append)
    reporter(PROGRESS_PREFIX + json.dumps({"step": 3, "total": 10, "time": 1.0, "loss": 1.5, "lr": 0.002}))
    assert parse_progress(messages[0]) == ProgressUpdate(3, 10, "loss=1.5, lr=0.002")

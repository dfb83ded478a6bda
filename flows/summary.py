"""The tables printed at the end of a command: what ran, what was cached, what it measured; what
was submitted and how to follow it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from tasks.stages import STAGES_BY_ID

if TYPE_CHECKING:
    from flows.detached import Submission
    from tasks.stage_task import StageResult


def wide_console() -> Console:
    """The terminal's width on a terminal; full lines (160 columns) in a file or a pipe."""
    return Console(width=None if sys.stdout.isatty() else 160)


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _key_metrics(stage_id: str, produced: str) -> tuple[str, ...]:
    """The headline metrics the stage declares (tasks.stages) for the runtime(s) that produce
    `produced`; none for a stage the table does not declare."""
    stage = STAGES_BY_ID.get(stage_id)
    return stage.headline_metrics(produced) if stage is not None else ()


def summary_table(results: list[StageResult], title: str = "nano3") -> Table:
    table = Table(title=f"{title} pipeline" if title == "nano3" else title)
    for column in ("stage", "status", "time (s)", "key metrics", "artifact"):
        table.add_column(column)
    for result in results:
        metrics = result.artifact.metrics
        wanted = _key_metrics(result.stage, result.artifact.type) or tuple(sorted(metrics))[:2]
        shown = ", ".join(f"{k}={_format(metrics[k])}" for k in wanted if k in metrics)
        table.add_row(result.stage, result.status, f"{result.seconds:.1f}", shown, result.artifact.ref)
    return table


def report_tables(results: list[StageResult]) -> list[Table]:
    """Each stage's report (eval: every checkpoint of the run on the same tasks), with where its charts are."""
    from tasks.lineage import chart_url

    tables = []
    for result in results:
        report = result.artifact.report
        if report is None:
            continue
        charts = ", ".join(chart_url(result.artifact, chart) for chart in report.charts)
        table = Table(title=f"{result.stage}: {report.title}", caption=f"charts: {charts}" if charts else None)
        for column in report.columns:
            table.add_column(column)
        for row in report.rows:
            table.add_row(*("–" if row.get(column) is None else _format(row[column]) for column in report.columns))
        tables.append(table)
    return tables


def gate_lines(results: list[StageResult]) -> list[str]:
    """What the run did to the model in service (promoted, rejected, nothing to do), a line each."""
    return [f"gate: {result.gate}" for result in results if result.gate]


def submissions_table(submissions: list[Submission]) -> Table:
    table = Table(title="nano3 submissions (detached)")
    for column in ("stage", "status", "experiment", "job id", "detail"):
        table.add_column(column)
    for item in submissions:
        table.add_row(item.stage, item.status, item.experiment_id or "-", item.job_id or "-", item.detail)
    return table

"""The run summary's key metrics are the stage's declared headline metrics (tasks/stages.py), for
the runtime that made the artifact; tests/summary_table.py reads the table's rows back."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from flows.summary import gate_lines, summary_table
from tasks.artifacts import ArtifactVersion
from tasks.stage_task import StageResult
from tasks.stages import STAGES, STAGES_BY_ID
from tests.summary_table import statuses


def result(stage: str, kind: str, metrics: dict[str, Any], status: str = "ran") -> StageResult:
    artifact = ArtifactVersion(
        name=f"nano3-{stage.replace('/', '-')}", version="v1", type=kind, digest="sha256:0", uri="file:///x",
        stage=stage, cache_key="k", created="2025-01-01T00:00:00Z", metrics=metrics,
    )
    return StageResult(stage=stage, status=status, seconds=1.25, artifact=artifact, inputs={})  # type: ignore[arg-type]


def rows(results: list[StageResult]) -> dict[str, str]:
    """stage → its key metrics cell."""
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(summary_table(results))
    found = {}
    for line in console.export_text().splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 5 and cells[0] in STAGES_BY_ID:
            found[cells[0]] = cells[3]
    return found


def test_every_runtime_declares_headline_metrics_except_the_autobridge_export() -> None:
    for stage in STAGES:
        for backend, runtime in stage.runtimes.items():
            assert runtime.key_metrics or (stage.id, backend) == ("convert", "megatron"), (stage.id, backend)
            assert len(set(runtime.key_metrics)) == len(runtime.key_metrics)


def test_a_stage_for_a_backend_carries_that_runtimes_metrics() -> None:
    pretrain = STAGES_BY_ID["pretrain"]
    assert pretrain.key_metrics == ("valid_loss", "valid_perplexity")
    assert pretrain.for_backend("megatron").key_metrics == ("iterations",)
    assert pretrain.for_backend("megatron").for_backend("hf").key_metrics == pretrain.key_metrics


def test_the_hf_pipelines_headline_metrics_in_order() -> None:
    results = [
        result("data_prep/pretrain", "binidx", {"vocab_size": 512, "num_tokens_train": 1000, "num_documents": 9}),
        result("pretrain", "checkpoint_hf", {"train_loss": 2.0, "valid_loss": 2.5, "valid_perplexity": 12.18}),
        result("sft", "checkpoint_hf", {"exact_match": 0.0, "exact_match_number": 0.95, "text_loss": 4.5, "steps": 3},
               status="cached"),
        result("convert", "checkpoint_hf", {"max_abs_logit_diff": 0.01, "top1_agreement": 1.0}),
        result("eval", "eval_results", {
            "exact_match": 0.9, "baseline_exact_match": 0.1, "bits_per_byte": 1.5, "baseline_bits_per_byte": 2.0,
            "improvement_exact_match": 0.8,
        }),
    ]
    assert rows(results) == {
        "data_prep/pretrain": "num_tokens_train=1000, vocab_size=512",
        "pretrain": "valid_loss=2.5, valid_perplexity=12.18",
        "sft": "exact_match_number=0.95, exact_match=0, text_loss=4.5",
        "convert": "max_abs_logit_diff=0.01",
        "eval": "exact_match=0.9, baseline_exact_match=0.1, bits_per_byte=1.5, baseline_bits_per_byte=2",
    }


def test_the_megatron_runtimes_metrics_are_shown_too() -> None:
    """The artifact's type tells the runtime where it differs; where it does not, the metrics it reports do."""
    results = [
        result("pretrain", "checkpoint_megatron", {"iterations": 20}),
        result("rl", "checkpoint_megatron", {"steps": 4, "iteration": 40}),
        result("convert", "checkpoint_hf", {}),
        result("eval", "eval_results", {"exact_match": 0.5, "word_perplexity": 30.0, "bits_per_byte": 1.25}),
    ]
    assert rows(results) == {
        "pretrain": "iterations=20",
        "rl": "steps=4, iteration=40",
        "convert": "",
        "eval": "exact_match=0.5, bits_per_byte=1.25",
    }


def test_a_stage_the_table_does_not_declare_shows_its_first_two_metrics() -> None:
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(summary_table([result("toy/produce", "raw_jsonl", {"b": 2, "a": 1, "c": 3})]))
    assert "a=1, b=2" in console.export_text() and "c=3" not in console.export_text()


def test_the_table_reads_back() -> None:
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(summary_table([result("sft", "checkpoint_hf", {}, status="cached"), result("rl", "checkpoint_hf", {})]))
    assert statuses(console.export_text()) == {"sft": "cached", "rl": "ran"}


def test_the_gate_verdict_follows_the_table() -> None:
    evaluated = result("eval", "eval_results", {"exact_match": 0.4}).model_copy(
        update={"gate": "rejected: worse: exact_match 0.4 vs 0.9 in service; nano3-model-hf:v1 stays in service"})
    converted = result("convert", "checkpoint_hf", {})
    assert gate_lines([converted, evaluated]) == [
        "gate: rejected: worse: exact_match 0.4 vs 0.9 in service; nano3-model-hf:v1 stays in service"]
    assert gate_lines([converted]) == []
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(summary_table([converted, evaluated]))
    assert statuses(console.export_text()) == {"convert": "ran", "eval": "ran"}


def test_a_report_prints_as_its_own_table_with_where_its_charts_are() -> None:
    from flows.summary import report_tables
    from tasks.artifacts import Report
    from tasks.lineage import report_markdown

    evaluation = result("eval", "eval_results", {"exact_match": 0.9})
    evaluation.artifact.uri = "/store/eval/abc"
    evaluation.artifact.report = Report(
        title="Every checkpoint", columns=["checkpoint", "exact_match", "bits_per_byte"],
        rows=[{"checkpoint": "pretrained", "exact_match": 0.0, "bits_per_byte": 2.0123456},
              {"checkpoint": "rl", "exact_match": 0.91, "bits_per_byte": None}],
        charts=["ladder.png"],
    )
    console = Console(width=300, record=True, file=io.StringIO())
    for table in report_tables([result("pretrain", "checkpoint_hf", {}), evaluation]):
        console.print(table)
    text = console.export_text()
    assert "eval: Every checkpoint" in text and "charts: file:///store/eval/abc/ladder.png" in text
    lines = [" ".join(line.strip("│┃ ").replace("│", " ").split()) for line in text.splitlines()]
    assert "pretrained 0 2.012" in lines and "rl 0.91 –" in lines
    markdown = report_markdown("eval", evaluation.artifact)
    assert "| checkpoint | exact_match | bits_per_byte |" in markdown and "| rl | 0.91 | – |" in markdown
    assert "![ladder.png](file:///store/eval/abc/ladder.png)" in markdown

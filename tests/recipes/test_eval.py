"""The eval recipe run as the orchestrator runs it, and its tasks scored by lm-eval itself.

Untrained models stand in for the export, the baseline and the SFT checkpoint: the recipe's job is
to score each on the same local tasks without touching the network, and to report them as the
run's ladder (a table and two charts). That a right answer scores 1.0 is shown with
lm-eval's own evaluator on the same task files, driven by an LM that computes the sums.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recipes.nano3 import runtime
from recipes.nano3.eval.evaluate import resolve_local_tasks
from tests.recipes.conftest import PROJECT, config_path, run_recipe, write_resolved_config
from tests.recipes.test_pretrain import SMALL_MODEL

LIMIT = 8
TASKS = ["nano3_arithmetic", "nano3_docstring_ppl"]

#: Loaded first by every Python process that has it on its path: records and refuses any attempt
#: to reach another machine (name lookups included), so a download cannot pass unnoticed.
NETWORK_GUARD = """
import os, sys

def _guard(event, args):
    if event == "socket.getaddrinfo" or (event == "socket.connect" and isinstance(args[1], tuple)):
        with open(os.environ["NETWORK_ATTEMPTS"], "a") as log:
            log.write(f"{event} {args[1] if event == 'socket.connect' else args[0]}\\n")
        raise ConnectionRefusedError("network access is disabled in this test")

sys.addaudithook(_guard)
"""


def save_random_model(tokenizer_dir: Path, folder: Path, seed: int) -> Path:
    import torch

    from recipes.nano3 import hf_model

    torch.manual_seed(seed)
    tokenizer = hf_model.load_tokenizer(tokenizer_dir)
    hf_model.save_model(hf_model.build_model(SMALL_MODEL, tokenizer), tokenizer, folder)
    return folder


#: A training curve as the training recipes keep it in their model folder (train_history.json).
SFT_HISTORY = [{"step": 10, "loss": 2.5, "replay_loss": 4.4, "lr": 0.003}, {"step": 20, "loss": 1.5, "replay_loss": 4.5, "lr": 0.002}]


@pytest.fixture(scope="module")
def models(pretrain_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("eval_models")
    sft = save_random_model(pretrain_data / "tokenizer", root / "sft", seed=3)
    (sft / "train_history.json").write_text(json.dumps(SFT_HISTORY))
    return (
        save_random_model(pretrain_data / "tokenizer", root / "model", seed=1),
        save_random_model(pretrain_data / "tokenizer", root / "baseline", seed=2),
        sft,
    )


def resolved_config(root: Path, model: Path, baseline: Path, data: Path, corpus: Path, sft: Path | None = None,
                    **overrides: object) -> Path:
    return write_resolved_config(
        root / "config.yaml", "eval", config_path("eval"), root / "output", root / "work",
        inputs={
            "model": (model, "checkpoint_hf"),
            "baseline": (baseline, "checkpoint_hf"),
            "data": (data, "training_jsonl"),
            "corpus": (corpus, "binidx"),
            **({"sft": (sft, "checkpoint_hf")} if sft else {}),
        },
        overrides={"limit": LIMIT, "batch_size": 8, **overrides},
    )


@pytest.fixture(scope="module")
def evaluation(models, sft_data: Path, pretrain_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    guard = root / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    # The recipe's own process, without the test environment's offline switches: the recipe must set them.
    env = {"PYTHONPATH": f"{guard}:{PROJECT}", "NETWORK_ATTEMPTS": str(root / "network_attempts.log"),
           "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    model, baseline, sft = models
    result = run_recipe("eval", resolved_config(root, model, baseline, sft_data, pretrain_data, sft), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_results_hold_every_model_on_both_tasks(evaluation: Path) -> None:
    results = json.loads((evaluation / "output" / "results.json").read_text())
    assert set(results) == {"model", "baseline", "sft"}
    for side in ("model", "baseline", "sft"):
        assert set(results[side]) == set(TASKS)
        assert 0.0 <= results[side]["nano3_arithmetic"]["exact_match"] <= 1.0
        assert results[side]["nano3_arithmetic"]["sample_len"] == LIMIT
        assert results[side]["nano3_docstring_ppl"]["word_perplexity"] > 1.0
    # Two different random models: their perplexities cannot agree.
    assert results["model"]["nano3_docstring_ppl"] != results["baseline"]["nano3_docstring_ppl"]


def test_manifest_carries_the_headline_numbers(evaluation: Path) -> None:
    data = json.loads((evaluation / "output" / "manifest.json").read_text())
    results = json.loads((evaluation / "output" / "results.json").read_text())
    assert data["type"] == "eval_results"
    assert [entry["path"] for entry in data["files"]] == ["ladder.png", "loss_curves.png", "results.json"]
    assert runtime.sha256_file(evaluation / "output" / "results.json") == data["files"][2]["sha256"]
    metrics = data["metrics"]
    model, baseline = (results[side]["nano3_arithmetic"]["exact_match"] for side in ("model", "baseline"))
    assert metrics["exact_match"] == model and metrics["baseline_exact_match"] == baseline
    assert metrics["improvement_exact_match"] == pytest.approx(model - baseline)
    assert metrics["word_perplexity"] == results["model"]["nano3_docstring_ppl"]["word_perplexity"]


def test_the_report_is_the_ladder_of_checkpoints_with_its_charts(evaluation: Path) -> None:
    data = json.loads((evaluation / "output" / "manifest.json").read_text())
    results = json.loads((evaluation / "output" / "results.json").read_text())
    report = data["report"]
    # Training order, whatever order the inputs came in; each row's numbers are results.json's.
    assert [row["checkpoint"] for row in report["rows"]] == ["pretrained", "sft", "export"]
    for row, side in zip(report["rows"], ("baseline", "sft", "model"), strict=True):
        assert row["exact_match"] == results[side]["nano3_arithmetic"]["exact_match"]
        assert row["bits_per_byte"] == results[side]["nano3_docstring_ppl"]["bits_per_byte"]
    assert data["metrics"]["sft_exact_match"] == report["rows"][1]["exact_match"]
    assert report["charts"] == ["ladder.png", "loss_curves.png"]
    for chart in report["charts"]:
        png = (evaluation / "output" / chart).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, chart


def test_no_network_access_was_attempted(evaluation: Path) -> None:
    log = evaluation / "network_attempts.log"
    assert not log.exists(), log.read_text()


def test_without_baseline_only_the_model_is_scored(models, sft_data: Path, pretrain_data: Path, tmp_path: Path) -> None:
    model, *_ = models
    missing = tmp_path / "no_baseline"
    config = resolved_config(tmp_path, model, missing, sft_data, pretrain_data,
                             compare_baseline=False, tasks=["nano3_arithmetic"])
    result = run_recipe("eval", config)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "output" / "results.json").read_text())
    assert results["baseline"] is None and set(results["model"]) == {"nano3_arithmetic"}
    assert "improvement_exact_match" not in json.loads((tmp_path / "output" / "manifest.json").read_text())["metrics"]


def test_a_missing_data_file_fails_before_evaluating(models, pretrain_data: Path, tmp_path: Path) -> None:
    empty = tmp_path / "sft_data"
    empty.mkdir()
    result = run_recipe("eval", resolved_config(tmp_path, *models[:2], empty, pretrain_data))
    assert result.returncode != 0
    assert f"error: task nano3_arithmetic: its test data {empty / 'valid.jsonl'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "output" / "manifest.json").exists()


def calculator(error: int):
    """An lm-eval LM that adds the numbers of each prompt, off by `error`."""
    from lm_eval.api.model import LM

    class Calculator(LM):
        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            sums = [sum(map(int, re.findall(r"\d+", request.args[0]))) for request in requests]
            return [str(total + error) for total in sums]

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

    return Calculator()


@pytest.mark.parametrize(("error", "expected"), [(0, 1.0), (1, 0.0)])
def test_the_arithmetic_task_scores_exact_answers(
    sft_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, expected: float
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    assert resolve_local_tasks(["nano3_arithmetic"], {"data": sft_data}, tmp_path) == ["nano3_arithmetic"]
    output = lm_eval.simple_evaluate(
        model=calculator(error),
        tasks=["nano3_arithmetic"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        limit=20,
        bootstrap_iters=0,
        log_samples=False,
    )
    assert output["results"]["nano3_arithmetic"]["exact_match,none"] == expected

"""The convert recipe run as the orchestrator runs it: a bf16 export whose logits stay within the
tolerance of the fp32 source is published; one that does not leaves no artifact behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes.nano3 import runtime
from tests.recipes.conftest import config_path, run_recipe, write_resolved_config
from tests.recipes.test_pretrain import SMALL_MODEL

MODEL_FILES = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(scope="module")
def source_model(pretrain_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp32 model folder as RL writes one; random weights are enough for bf16 rounding to show."""
    from recipes.nano3 import hf_model

    tokenizer = hf_model.load_tokenizer(pretrain_data / "tokenizer")
    folder = tmp_path_factory.mktemp("convert_source")
    hf_model.save_model(hf_model.build_model(SMALL_MODEL, tokenizer), tokenizer, folder)
    return folder


def resolved_config(root: Path, model: Path, **overrides: object) -> Path:
    return write_resolved_config(
        root / "config.yaml", "convert", config_path("convert"), root / "output", root / "work",
        inputs={"model": (model, "checkpoint_hf")}, overrides=overrides,
    )


@pytest.fixture(scope="module")
def export(source_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("convert")
    result = run_recipe("convert", resolved_config(root, source_model))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "output"


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_weights_are_bf16_in_the_safetensors_file(export: Path) -> None:
    from safetensors import safe_open

    with safe_open(export / "model.safetensors", "pt") as handle:
        dtypes = {handle.get_slice(name).get_dtype() for name in handle.keys()}
    assert dtypes == {"BF16"}
    assert json.loads((export / "config.json").read_text())["dtype"] == "bfloat16"


def test_export_loads_with_its_tokenizer_and_matches_the_source(export: Path, source_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(export)
    assert model.model.embeddings.weight.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(source_model).get_vocab()
    assert tokenizer.chat_template


def test_manifest_records_the_logit_check_and_the_files(export: Path) -> None:
    data = manifest(export)
    assert data["type"] == "checkpoint_hf"
    assert MODEL_FILES <= {entry["path"] for entry in data["files"]}
    for entry in data["files"]:
        assert runtime.sha256_file(export / entry["path"]) == entry["sha256"], entry["path"]
    metrics = data["metrics"]
    # bf16 rounding moves the logits, by less than the tiny config allows.
    limits = data["metadata"]["check_logits"]
    assert 0.0 < metrics["mean_abs_logit_diff"] <= limits["max_mean_abs_diff"]
    assert metrics["top1_agreement"] >= limits["min_top1_agreement"] > 0.5


@pytest.mark.parametrize("limit, message", [
    ("check_logits.max_abs_diff=0.0", "exceeds check_logits.max_abs_diff 0.0"),
    ("check_logits.max_mean_abs_diff=0.0", "exceeds check_logits.max_mean_abs_diff 0.0"),
    ("check_logits.min_top1_agreement=1.01", "is below check_logits.min_top1_agreement 1.01"),
])
def test_an_export_beyond_the_tolerance_is_not_published(source_model: Path, tmp_path: Path, limit: str, message: str) -> None:
    key, value = limit.split("=")
    result = run_recipe("convert", resolved_config(tmp_path, source_model, **{key: float(value)}))
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "output").iterdir()) == []


def test_a_missing_model_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run_recipe("convert", resolved_config(tmp_path, missing))
    assert result.returncode != 0
    assert f"error: input 'model' at {missing} does not exist" in result.stderr
    assert not (tmp_path / "output" / "manifest.json").exists()

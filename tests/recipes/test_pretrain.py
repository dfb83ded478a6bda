"""The pretrain recipe run as the orchestrator runs it, on the data-prep artifact at test scale.

What later stages rely on: the model learns (held-out loss falls), a job killed after a checkpoint
continues from it instead of starting over, the output folder loads with the Auto classes on CPU
and the manifest describes exactly the files there, and a wrong input fails before any work.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipes.nano3 import runtime
from tests.recipes.conftest import config_path, run_recipe, start_recipe, write_resolved_config

#: Every layer kind of the tiny model, at a size that trains a step in milliseconds.
SMALL_MODEL = {
    "hidden_size": 64,
    "layers_block_type": ["linear_attention", "full_attention", "mlp", "moe"],
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "intermediate_size": 128,
    "mamba_num_heads": 4,
    "mamba_head_dim": 16,
    "ssm_state_size": 16,
    "n_groups": 2,
    "moe_intermediate_size": 64,
    "moe_shared_expert_intermediate_size": 64,
}
TRAIN_ITERS = 60
SMALL_TRAIN = {
    "train.seq_length": 64,
    "train.micro_batch_size": 8,
    "train.train_iters": TRAIN_ITERS,
    "train.lr": 3.0e-3,
    "train.min_lr": 3.0e-4,
    "train.warmup_iters": 5,
    "train.log_interval": 5,
    "train.save_interval": 5,
    "train.eval_interval": 30,
    "train.eval_iters": 2,
}


def resolved_config(tmp_path: Path, data: Path) -> Path:
    return write_resolved_config(
        tmp_path / "config.yaml", "pretrain", config_path("pretrain"), tmp_path / "output", tmp_path / "work",
        inputs={"data": (data, "binidx")}, overrides={"model": SMALL_MODEL, **SMALL_TRAIN},
    )


def kill_after_first_checkpoint(config: Path) -> None:
    process = start_recipe("pretrain", config)
    for line in process.stdout:
        if line.startswith("checkpoint saved"):
            process.kill()
            break
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0, f"the run ended before it could be killed:\n{stderr[-2000:]}"


@dataclass(frozen=True)
class ResumedRun:
    folder: Path
    killed_at: int
    stdout: str
    manifest: dict


@pytest.fixture(scope="module")
def resumed_run(pretrain_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ResumedRun:
    """A run killed right after its first checkpoint, then started again with the same config."""
    root = tmp_path_factory.mktemp("pretrain")
    config = resolved_config(root, pretrain_data)
    kill_after_first_checkpoint(config)
    assert not (root / "output" / "manifest.json").exists()
    killed_at, _ = runtime.latest_checkpoint(root / "work")
    result = run_recipe("pretrain", config)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((root / "output" / "manifest.json").read_text())
    return ResumedRun(root / "output", killed_at, result.stdout, manifest)


def test_a_killed_run_resumes_from_its_checkpoint(resumed_run: ResumedRun) -> None:
    assert 0 < resumed_run.killed_at < TRAIN_ITERS
    assert f"resumed from step {resumed_run.killed_at}" in resumed_run.stdout
    assert resumed_run.manifest["metrics"]["steps"] == TRAIN_ITERS
    progress = [json.loads(line.removeprefix(runtime.PROGRESS_PREFIX)) for line in resumed_run.stdout.splitlines()
                if line.startswith(runtime.PROGRESS_PREFIX)]
    assert progress[0]["step"] > resumed_run.killed_at and progress[-1]["step"] == TRAIN_ITERS


def test_held_out_loss_falls(resumed_run: ResumedRun) -> None:
    metrics = resumed_run.manifest["metrics"]
    assert metrics["valid_loss"] < metrics["valid_loss_start"] - 1.0, metrics
    assert metrics["valid_perplexity"] == pytest.approx(math.exp(metrics["valid_loss"]), rel=1e-3)
    assert metrics["valid_perplexity_start"] > metrics["valid_perplexity"]
    assert metrics["train_loss"] < metrics["valid_loss_start"]
    assert metrics["tokens_per_s"] > 0


def test_manifest_digests_match_the_files(resumed_run: ResumedRun, pretrain_data: Path) -> None:
    folder, manifest = resumed_run.folder, resumed_run.manifest
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert {f["path"] for f in manifest["files"]} == on_disk
    for entry in manifest["files"]:
        content = (folder / entry["path"]).read_bytes()
        assert (hashlib.sha256(content).hexdigest(), len(content)) == (entry["sha256"], entry["size"])
    assert manifest["type"] == "checkpoint_hf"
    assert [i["path"] for i in manifest["inputs"]] == [str(pretrain_data)]


def test_output_loads_with_the_auto_classes_on_cpu(resumed_run: ResumedRun) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(resumed_run.folder, device_map="cpu")
    tokenizer = AutoTokenizer.from_pretrained(resumed_run.folder)
    ids = tokenizer("Return the sum of 12 and 30.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert model.config.chunk_size == 16  # the tiny config's, kept for every later stage
    assert tokenizer.convert_tokens_to_ids("<end>") in model.generation_config.eos_token_id
    prompt = [{"role": "user", "content": "1+2="}]
    rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert rendered == "<user>1+2=<end><assistant>"


@pytest.mark.parametrize("damage", ["missing folder", "no blend.json"])
def test_a_bad_data_input_fails_clearly_and_writes_no_manifest(
    pretrain_data: Path, tmp_path: Path, damage: str
) -> None:
    data = tmp_path / "data"
    if damage == "no blend.json":
        data.mkdir()
        for path in pretrain_data.iterdir():
            if path.name != "blend.json" and path.is_file():
                (data / path.name).symlink_to(path)
        (data / "tokenizer").symlink_to(pretrain_data / "tokenizer")
    result = run_recipe("pretrain", resolved_config(tmp_path, data))
    assert result.returncode != 0
    expected = "does not exist" if damage == "missing folder" else "has no blend.json"
    assert f"error: input 'data' at {data} {expected}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "output" / "manifest.json").exists()


def test_a_warm_start_continues_from_the_model_and_keeps_its_tokenizer(
    resumed_run: ResumedRun, tmp_path: Path
) -> None:
    """New data, the model in service's tokenizer kept (data prep tokenizer_from), its weights
    continued (pretrain init_from): training starts where that model ended, not from scratch."""
    from tests.recipes.conftest import PRETRAIN_OVERRIDES

    model = (resumed_run.folder, "checkpoint_hf")
    data_config = write_resolved_config(
        tmp_path / "data.yaml", "data_prep/pretrain", config_path("data_prep/pretrain"), tmp_path / "data",
        tmp_path / "data-work", inputs={"tokenizer_from": model},
        overrides={**PRETRAIN_OVERRIDES, "corpus.max_bytes": 200_000},  # other data than the model saw
    )
    prepared = run_recipe("data_prep/pretrain", data_config)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "tokenizer: kept from " in prepared.stdout
    kept = json.loads((tmp_path / "data" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert kept == json.loads((resumed_run.folder / "tokenizer.json").read_text())["model"]["vocab"]

    config = write_resolved_config(
        tmp_path / "warm.yaml", "pretrain", config_path("pretrain"), tmp_path / "output", tmp_path / "work",
        inputs={"data": (tmp_path / "data", "binidx"), "init_from": model},
        overrides={"model": SMALL_MODEL, **SMALL_TRAIN, "train.train_iters": 5, "train.eval_interval": 5},
    )
    warm = run_recipe("pretrain", config)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert "warm start: weights of " in warm.stdout
    metrics = json.loads((tmp_path / "output" / "manifest.json").read_text())["metrics"]
    cold = resumed_run.manifest["metrics"]
    # A fresh model starts near ln(vocab); the continued one near where the first run ended.
    assert metrics["valid_loss_start"] < cold["valid_loss_start"] - 1.0, (metrics, cold)


def test_a_warm_start_from_another_vocabulary_is_refused(resumed_run: ResumedRun, pretrain_data: Path,
                                                         tmp_path: Path) -> None:
    import shutil

    from tokenizers import Tokenizer

    other = tmp_path / "other-model"
    shutil.copytree(resumed_run.folder, other)
    tokenizer = Tokenizer.from_file(str(other / "tokenizer.json"))
    tokenizer.add_tokens(["<a-token-the-data-lacks>"])
    tokenizer.save(str(other / "tokenizer.json"))
    config = write_resolved_config(
        tmp_path / "warm.yaml", "pretrain", config_path("pretrain"), tmp_path / "output", tmp_path / "work",
        inputs={"data": (pretrain_data, "binidx"), "init_from": (other, "checkpoint_hf")},
        overrides={"model": SMALL_MODEL, **SMALL_TRAIN},
    )
    refused = run_recipe("pretrain", config)
    assert refused.returncode != 0
    assert "error: cannot warm start from other-model:v1: its vocabulary" in refused.stderr, refused.stderr[-2000:]
    assert "set data_prep/pretrain's run.tokenizer_from" in refused.stderr
    assert not (tmp_path / "output" / "manifest.json").exists()

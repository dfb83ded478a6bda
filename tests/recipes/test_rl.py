"""The RL recipe run as the orchestrator runs it: GRPO steps, a job killed after a checkpoint that
continues from it, a model folder the next stage loads, and inputs that are wrong failing early.

A tiny random model never samples a right sum, so the reward cannot move at test scale; the
reward function itself is checked on replies whose score is known.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipes.nano3 import runtime
from recipes.nano3.rl.train import exact_match_reward
from tasks.stages import STAGES_BY_ID
from tests.recipes.conftest import PROJECT, config_path, recipe_env, run_recipe, write_resolved_config
from tests.recipes.test_pretrain import SMALL_MODEL

TRAIN_ITERS, SAVE_INTERVAL = 6, 2
SMALL_RL = {
    "grpo.num_generations": 4,
    "train.micro_batch_size": 8,
    "train.save_interval": SAVE_INTERVAL,
    "train.log_interval": 2,
    "eval.limit": 16,
}


@pytest.fixture(scope="module")
def base_model(pretrain_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained model folder as SFT writes one: RL's mechanics need no trained policy."""
    from recipes.nano3 import hf_model

    tokenizer = hf_model.load_tokenizer(pretrain_data / "tokenizer")
    folder = tmp_path_factory.mktemp("rl_base_model")
    hf_model.save_model(hf_model.build_model(SMALL_MODEL, tokenizer), tokenizer, folder)
    return folder


def resolved_config(root: Path, data: Path, model: Path, train_iters: int) -> Path:
    return write_resolved_config(
        root / "config.yaml", "rl", config_path("rl"), root / "output", root / "work",
        inputs={"data": (data, "training_jsonl"), "model": (model, "checkpoint_hf")},
        overrides={**SMALL_RL, "train.train_iters": train_iters},
    )


def kill_after_first_checkpoint(config: Path) -> int:
    """Start a long job, kill it once a checkpoint is complete; the step of that checkpoint."""
    process = subprocess.Popen(
        [sys.executable, str(STAGES_BY_ID["rl"].script_path), "--config", str(config)],
        cwd=PROJECT, env=recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    saved = None
    for line in process.stdout:
        if match := re.match(r"checkpoint saved: step (\d+)", line):
            saved = int(match.group(1))
            process.kill()
            break
    output, _ = process.communicate(timeout=60)
    assert saved is not None and process.returncode != 0, f"the run ended before it could be killed:\n{output[-3000:]}"
    return saved


@dataclass(frozen=True)
class Run:
    root: Path
    killed_at: int
    stdout: str


@pytest.fixture(scope="module")
def run(rl_data: Path, base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("rl")
    killed_at = kill_after_first_checkpoint(resolved_config(root, rl_data, base_model, train_iters=200))
    result = run_recipe("rl", resolved_config(root, rl_data, base_model, train_iters=TRAIN_ITERS))
    assert result.returncode == 0, result.stderr[-3000:]
    return Run(root, killed_at, result.stdout)


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_a_killed_job_resumes_from_its_checkpoint_and_finishes(run: Run) -> None:
    assert f"resumed from step {run.killed_at}" in run.stdout
    prefix = runtime.PROGRESS_PREFIX
    lines = [json.loads(line.removeprefix(prefix)) for line in run.stdout.splitlines() if line.startswith(prefix)]
    assert [line["step"] for line in lines] == list(range(run.killed_at + 2, TRAIN_ITERS + 1, 2))
    assert all(line["total"] == TRAIN_ITERS and "loss" in line and "reward" in line for line in lines)
    metrics = manifest(run.root / "output")["metrics"]
    assert metrics["steps"] == TRAIN_ITERS
    assert 0.0 <= metrics["exact_match_start"] <= 1.0 and 0.0 <= metrics["exact_match"] <= 1.0
    assert manifest(run.root / "output")["metadata"]["resumed_from_step"] == run.killed_at


def test_manifest_digests_match_the_files(run: Run) -> None:
    entries = manifest(run.root / "output")["files"]
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {e["path"] for e in entries}
    for entry in entries:
        assert runtime.sha256_file(run.root / "output" / entry["path"]) == entry["sha256"], entry["path"]


def test_output_loads_and_stops_at_the_end_of_its_turn(run: Run) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = run.root / "output"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == len(tokenizer)
    eos = GenerationConfig.from_pretrained(folder).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<end>") in eos and tokenizer.eos_token_id in eos


def test_reward_is_exact_match_of_the_reply() -> None:
    replies = [[{"role": "assistant", "content": text}] for text in ("82", " 82 ", "820", "8", "")]
    assert exact_match_reward(replies, ["82"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert exact_match_reward(["17"], ["17"]) == [1.0]


@pytest.mark.parametrize("broken", ["model", "data"])
def test_a_missing_input_fails_clearly_and_writes_no_manifest(
    rl_data: Path, base_model: Path, tmp_path: Path, broken: str
) -> None:
    missing = tmp_path / "nowhere"
    data, model = (missing, base_model) if broken == "data" else (rl_data, missing)
    result = run_recipe("rl", resolved_config(tmp_path, data, model, TRAIN_ITERS))
    assert result.returncode != 0
    assert f"error: input '{broken}' at {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "output" / "manifest.json").exists()


def test_problems_without_answers_are_refused(base_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "1+1="}]}) + "\n")
    (data / "valid.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "1+2="}], "answer": "3"}) + "\n")
    result = run_recipe("rl", resolved_config(tmp_path, data, base_model, TRAIN_ITERS))
    assert result.returncode != 0
    assert f"error: {data / 'train.jsonl'}:1: expected" in result.stderr
    assert not (tmp_path / "output" / "manifest.json").exists()

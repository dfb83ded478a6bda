"""The SFT recipe run as the orchestrator runs it, and the two pieces its result depends on.

The loss must see the answer only (a model taught to reproduce prompts learns arithmetic far
slower), exact match must not depend on how problems were batched, a job that stopped continues
from its checkpoint (its training curve too), the pretraining text it replays is trained on and
measured, and a wrong input fails before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipes.nano3 import runtime
from recipes.nano3.sft.train import IGNORE_INDEX, mask_prompt, read_conversations, tokenize_conversation
from tests.recipes.conftest import config_path, run_recipe, write_resolved_config
from tests.recipes.test_pretrain import SMALL_MODEL

FIRST_ITERS, SECOND_ITERS = 8, 12
SMALL_TRAIN = {
    "train.micro_batch_size": 16,
    "train.lr": 3.0e-3,
    "train.warmup_iters": 2,
    "train.log_interval": 2,
    "train.save_interval": 4,
    "train.eval_interval": 100,
}


@pytest.fixture(scope="module")
def tokenizer(pretrain_data: Path):
    from recipes.nano3 import hf_model

    return hf_model.load_tokenizer(pretrain_data / "tokenizer")


@pytest.fixture(scope="module")
def base_model(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained model folder as pretrain writes one: SFT's input needs no pretraining to be tested."""
    from recipes.nano3 import hf_model

    folder = tmp_path_factory.mktemp("base_model")
    hf_model.save_model(hf_model.build_model(SMALL_MODEL, tokenizer), tokenizer, folder)
    return folder


def resolved_config(root: Path, data: Path, model: Path, output: str, train_iters: int, corpus: Path | None = None) -> Path:
    """The tiny config, which replays pretraining text: `corpus` None leaves that input out."""
    return write_resolved_config(
        root / f"{output}.yaml", "sft", config_path("sft"), root / output, root / "work",
        inputs={"data": (data, "training_jsonl"), "model": (model, "checkpoint_hf"),
                **({"corpus": (corpus, "binidx")} if corpus else {})},
        overrides={**SMALL_TRAIN, "train.train_iters": train_iters, "replay.seq_length": 64},
    )


@dataclass(frozen=True)
class Runs:
    root: Path
    first_stdout: str
    second_stdout: str


@pytest.fixture(scope="module")
def runs(sft_data: Path, pretrain_data: Path, base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A finished run, then the same job asked for more steps: the second must start where the first ended."""
    root = tmp_path_factory.mktemp("sft")
    outputs = []
    for output, iters in (("first", FIRST_ITERS), ("second", SECOND_ITERS)):
        result = run_recipe("sft", resolved_config(root, sft_data, base_model, output, iters, pretrain_data))
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout)
    return Runs(root, *outputs)


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def progress(stdout: str) -> list[dict]:
    prefix = runtime.PROGRESS_PREFIX
    return [json.loads(line.removeprefix(prefix)) for line in stdout.splitlines() if line.startswith(prefix)]


def test_loss_falls_and_exact_match_is_measured_before_and_after(runs: Runs) -> None:
    losses = [line["loss"] for line in progress(runs.first_stdout)]
    assert losses[-1] < losses[0] - 0.5, losses
    metrics = manifest(runs.root / "first")["metrics"]
    assert metrics["steps"] == FIRST_ITERS
    for key in ("exact_match_start", "exact_match", "exact_match_number_start", "exact_match_number"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["exact_match_number"] >= metrics["exact_match"], "a reply that is the sum has the sum's number"
    assert "held-out exact match" in runs.first_stdout


def test_a_longer_job_resumes_from_the_last_checkpoint(runs: Runs) -> None:
    assert f"resumed from step {FIRST_ITERS}" in runs.second_stdout
    assert "step 0: held-out exact match" not in runs.second_stdout  # the start score comes from the checkpoint
    assert [line["step"] for line in progress(runs.second_stdout)] == list(range(FIRST_ITERS + 2, SECOND_ITERS + 1, 2))
    first, second = manifest(runs.root / "first")["metrics"], manifest(runs.root / "second")["metrics"]
    assert second["steps"] == SECOND_ITERS
    assert second["exact_match_start"] == first["exact_match_start"]
    assert second["text_loss_start"] == first["text_loss_start"]
    # The curve of the whole job, the steps before the restart included.
    curve = json.loads((runs.root / "second" / "train_history.json").read_text())
    assert [entry["step"] for entry in curve] == list(range(2, SECOND_ITERS + 1, 2))


def test_replayed_text_is_trained_on_and_measured(runs: Runs) -> None:
    lines = progress(runs.first_stdout)
    assert all(line["replay_loss"] > 0 for line in lines), lines
    metrics = manifest(runs.root / "first")["metrics"]
    # An untrained model over a 4096-token vocabulary: about ln(4096) = 8.3 nats a token at first.
    assert 6.0 < metrics["text_loss_start"] < 10.0 and metrics["text_loss"] < metrics["text_loss_start"], metrics
    curve = json.loads((runs.root / "first" / "train_history.json").read_text())
    assert [entry["replay_loss"] for entry in curve] == [line["replay_loss"] for line in lines]


def test_replay_without_the_pretraining_data_is_one_clear_error(sft_data: Path, base_model: Path, tmp_path: Path) -> None:
    result = run_recipe("sft", resolved_config(tmp_path, sft_data, base_model, "output", FIRST_ITERS))
    assert result.returncode != 0
    assert "replay is set but run.corpus names no pretraining data to replay" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "output" / "manifest.json").exists()


def test_output_is_a_model_folder_with_the_short_mamba_chunks(runs: Runs) -> None:
    from transformers import AutoConfig, AutoTokenizer

    folder = runs.root / "second"
    files = {entry["path"] for entry in manifest(folder)["files"]}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert AutoConfig.from_pretrained(folder).chunk_size == 16
    assert AutoTokenizer.from_pretrained(folder).pad_token == "<pad>"


def test_mask_prompt_keeps_only_the_answer() -> None:
    assert mask_prompt([5, 6, 7], [5, 6, 7, 8, 9]) == [IGNORE_INDEX] * 3 + [8, 9]
    with pytest.raises(ValueError, match="does not start with its rendered prompt"):
        mask_prompt([5, 6, 7], [5, 7, 6, 8])


def test_tokenized_conversation_learns_the_answer_and_its_end_of_turn(tokenizer) -> None:
    messages = [{"role": "user", "content": "37+45="}, {"role": "assistant", "content": "82"}]
    input_ids, labels = tokenize_conversation(tokenizer, messages)
    assert tokenizer.decode(input_ids) == "<user>37+45=<end><assistant>82<end>"
    learned = [label for label in labels if label != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "82<end>"
    assert labels[: len(input_ids) - len(learned)] == [IGNORE_INDEX] * (len(input_ids) - len(learned))


def test_a_line_without_an_answer_to_learn_is_named(tmp_path: Path) -> None:
    lines = [{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]},
             {"messages": [{"role": "user", "content": "1+2="}]}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(SystemExit, match=f"error: {path}:2: expected"):
        read_conversations(path)


def test_exact_match_does_not_depend_on_batching(base_model: Path, sft_data: Path) -> None:
    from recipes.nano3 import hf_model

    model, tokenizer = hf_model.load_model(base_model, hf_model.choose_placement(), chunk_size=16)
    rows = hf_model.read_jsonl(sft_data / "valid.jsonl")[:10]
    short = [[{"role": "user", "content": question}] for question in ("7+5=", "3+40=", "100+1=") * 2]
    prompts = [row["messages"][:-1] for row in rows] + short  # several lengths: several batches
    one_by_one = hf_model.greedy_answers(model, tokenizer, prompts, batch_size=1, max_new_tokens=4)
    assert hf_model.greedy_answers(model, tokenizer, prompts, batch_size=64, max_new_tokens=4) == one_by_one
    half_right = [reply if i % 2 else reply + "0" for i, reply in enumerate(one_by_one)]
    assert hf_model.exact_match(model, tokenizer, prompts, half_right, max_new_tokens=4) == 0.5


@pytest.mark.parametrize("broken", ["model", "data"])
def test_a_missing_input_fails_clearly_and_writes_no_manifest(
    sft_data: Path, pretrain_data: Path, base_model: Path, tmp_path: Path, broken: str
) -> None:
    missing = tmp_path / "nowhere"
    data, model = (missing, base_model) if broken == "data" else (sft_data, missing)
    result = run_recipe("sft", resolved_config(tmp_path, data, model, "output", FIRST_ITERS, pretrain_data))
    assert result.returncode != 0
    assert f"error: input '{broken}' at {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "output" / "manifest.json").exists()

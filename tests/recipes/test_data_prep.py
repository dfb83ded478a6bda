"""The three data recipes, run as the orchestrator runs them, checked through their consumers' libraries.

What later stages rely on: megatron-core reads the .bin/.idx and finds what the manifest counts,
the tokenizer keeps digits apart and renders the chat template, held-out problems stay out of
every training file, and the same config gives the same bytes (the cache key assumes it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from recipes.nano3.data_prep.arithmetic import Problem
from tests.recipes.conftest import (
    PRETRAIN_OVERRIDES,
    RL_OVERRIDES,
    SFT_OVERRIDES,
    config_path,
    start_recipe,
    wait,
    write_resolved_config,
)

SPECIAL = ["<pad>", "<bos>", "<eos>", "<user>", "<assistant>", "<end>"]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def problems(path: Path) -> set[tuple[int, int]]:
    """Unordered operand pairs: a+b and b+a count as one problem, as knowing one gives the other away."""
    return {(min(p.a, p.b), max(p.a, p.b)) for p, _ in answered(path)}


def answered(path: Path) -> list[tuple[Problem, str]]:
    """Each line's problem and the answer the file gives it."""
    rows = []
    for record in read_jsonl(path):
        turns = record.get("messages") or record["prompt"]
        a, b = map(int, turns[0]["content"].removesuffix("=").split("+"))
        rows.append((Problem(a, b), turns[1]["content"] if "messages" in record else record["answer"]))
    return rows


def test_the_teacher_writes_right_sums_in_mixed_formats_and_the_verifier_wants_one(sft_data: Path, rl_data: Path) -> None:
    """SFT imitates teachers of mixed habits (the configured share of answers end with a period);
    every sum is right, and the answers that score and reward the models are the bare numbers."""
    from omegaconf import OmegaConf

    taught = answered(sft_data / "train.jsonl")
    assert all(answer.removesuffix(".") == p.answer for p, answer in taught)
    with_period = sum(answer.endswith(".") for _, answer in taught)
    share = OmegaConf.load(config_path("data_prep/sft")).teacher.period_share
    assert abs(with_period / len(taught) - share) < 0.05, with_period
    assert manifest(sft_data)["metrics"]["answers_with_period"] == with_period
    for path in (sft_data / "valid.jsonl", rl_data / "train.jsonl", rl_data / "valid.jsonl"):
        assert all(answer == p.answer for p, answer in answered(path)), path


def test_pretrain_binidx_reads_back_with_megatron(pretrain_data: Path) -> None:
    import numpy
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    metrics = manifest(pretrain_data)["metrics"]
    tokenizer = AutoTokenizer.from_pretrained(pretrain_data / "tokenizer")
    assert json.loads((pretrain_data / "blend.json").read_text()) == {
        "train": ["1.0", "train_text_document"],
        "validation": ["1.0", "valid_text_document"],
        "test": ["1.0", "valid_text_document"],
    }
    for split in ("train", "valid"):
        dataset = IndexedDataset(str(pretrain_data / f"{split}_text_document"))
        assert len(dataset) == metrics[f"num_documents_{split}"] > 0
        assert int(dataset.sequence_lengths.sum()) == metrics[f"num_tokens_{split}"]
        assert dataset.index.dtype == numpy.uint16  # the smallest dtype for a vocabulary under 65,500
        assert all(dataset[i][-1] == tokenizer.eos_token_id for i in range(len(dataset)))
    valid = IndexedDataset(str(pretrain_data / "valid_text_document"))
    texts = [r["text"] for r in read_jsonl(pretrain_data / "valid_text.jsonl")]
    assert len(texts) == len(valid)
    for index, text in enumerate(texts):
        ids = valid[index].tolist()
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in ids[:-1]
        assert max(ids) < metrics["vocab_size"]
        assert tokenizer.decode(ids[:-1]) == text  # byte-level BPE loses nothing
    assert metrics["num_documents"] == metrics["num_documents_train"] + metrics["num_documents_valid"]
    assert metrics["corpus_bytes"] <= PRETRAIN_OVERRIDES["corpus.max_bytes"]


def test_tokenizer_splits_digits_and_renders_the_chat_template(pretrain_data: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrain_data / "tokenizer")
    vocab_size = manifest(pretrain_data)["metrics"]["vocab_size"]
    assert len(tokenizer) == vocab_size == PRETRAIN_OVERRIDES["tokenizer.vocab_size"]
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert tokenizer.convert_ids_to_tokens(list(range(len(SPECIAL)))) == SPECIAL
    for number in ("0123456789", "37+45=82", "x = 1000 * 2024"):
        ids = tokenizer.encode(number, add_special_tokens=False)
        digits = [tokenizer.decode([i]) for i in ids if tokenizer.decode([i]).strip().isdigit()]
        assert digits == [c for c in number if c.isdigit()], (number, tokenizer.convert_ids_to_tokens(ids))
    chat = [{"role": "user", "content": "37+45="}, {"role": "assistant", "content": "82"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == "<user>37+45=<end><assistant>82<end>"
    prompt = tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<user>37+45=<end><assistant>"
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == ["<user>", "3", "7", "+", "4", "5", "=", "<end>", "<assistant>"]


def test_held_out_problems_are_in_no_training_file(sft_data: Path, rl_data: Path) -> None:
    sft_train, sft_valid = problems(sft_data / "train.jsonl"), problems(sft_data / "valid.jsonl")
    rl_train, rl_valid = problems(rl_data / "train.jsonl"), problems(rl_data / "valid.jsonl")
    assert len(sft_valid) == SFT_OVERRIDES["held_out"] and len(rl_valid) == RL_OVERRIDES["held_out"]
    assert not sft_valid & (sft_train | rl_train | rl_valid)
    assert not rl_valid & (rl_train | sft_train)
    assert len(read_jsonl(sft_data / "train.jsonl")) == manifest(sft_data)["metrics"]["train_examples"] == 2000
    assert len(read_jsonl(rl_data / "train.jsonl")) == manifest(rl_data)["metrics"]["train_prompts"] == 500
    assert all(10 <= a <= b <= 99 for a, b in sft_train | rl_train)


@pytest.mark.parametrize("fixture", ["pretrain_data", "sft_data", "rl_data"])
def test_manifest_digests_match_the_files(fixture: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(fixture)
    entries = manifest(folder)["files"]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert {e["path"] for e in entries} == on_disk
    for entry in entries:
        data = (folder / entry["path"]).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry["sha256"], entry["size"]), entry["path"]
    assert manifest(folder)["stage"] == f"data_prep/{fixture.removesuffix('_data')}"


def test_same_seed_same_bytes_and_a_rerun_resumes(pretrain_data: Path, tmp_path: Path) -> None:
    """A fresh run must rebuild every byte; a rerun in the same work_dir must skip to encoding."""
    base = config_path("data_prep/pretrain")
    fresh = write_resolved_config(tmp_path / "fresh.yaml", "data_prep/pretrain", base, tmp_path / "fresh",
                                  tmp_path / "fresh_work", overrides=PRETRAIN_OVERRIDES)
    resumed = write_resolved_config(tmp_path / "resumed.yaml", "data_prep/pretrain", base, tmp_path / "resumed",
                                    pretrain_data.parent / "work", overrides=PRETRAIN_OVERRIDES)
    fresh_run, resumed_run = map(wait, [start_recipe("data_prep/pretrain", c) for c in (fresh, resumed)])
    for run in (fresh_run, resumed_run):
        assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed from step" not in fresh_run.stdout
    assert "resumed from step 2" in resumed_run.stdout
    for name in ("train_text_document.bin", "train_text_document.idx", "valid_text_document.bin",
                 "valid_text_document.idx", "tokenizer/tokenizer.json", "valid_text.jsonl"):
        original = (pretrain_data / name).read_bytes()
        assert (tmp_path / "fresh" / name).read_bytes() == original, name
        assert (tmp_path / "resumed" / name).read_bytes() == original, name


def test_ray_engine_writes_the_same_bytes(pretrain_data: Path, tmp_path: Path) -> None:
    """Encoding fanned out over a local Ray of 2 workers gives the single-process run's bytes."""
    work = tmp_path / "work"
    shutil.copytree(pretrain_data.parent / "work" / "checkpoints", work / "checkpoints")  # corpus and tokenizer
    overrides = {**PRETRAIN_OVERRIDES, "encode.engine": "ray", "encode.workers": 2}
    config = write_resolved_config(tmp_path / "ray.yaml", "data_prep/pretrain", config_path("data_prep/pretrain"),
                                   tmp_path / "ray", work, overrides=overrides)
    run = wait(start_recipe("data_prep/pretrain", config))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed from step 2" in run.stdout and "Started a local Ray instance" in run.stderr
    for name in ("train_text_document.bin", "train_text_document.idx", "valid_text_document.bin",
                 "valid_text_document.idx", "blend.json", "valid_text.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (pretrain_data / name).read_bytes(), name
    single, fanned = manifest(pretrain_data)["metrics"], manifest(tmp_path / "ray")["metrics"]
    assert {k: v for k, v in fanned.items() if k != "seconds"} == {k: v for k, v in single.items() if k != "seconds"}
    assert not list((work / "shards").rglob("shard_*")), "shards are removed once joined"


#: (stage, base config, overrides, what stderr must say). The default configs read the hub, which
#: the tests switch off: that is how a cluster config fails on a machine without network access.
BAD_INPUTS = {
    "no corpus": ("data_prep/pretrain", "tiny", {**PRETRAIN_OVERRIDES, "corpus.max_bytes": 0},
                  "error: the corpus is empty or too small under corpus.max_bytes=0: 0 train and 0 valid"),
    "a corpus too small to split": ("data_prep/pretrain", "tiny", {**PRETRAIN_OVERRIDES, "corpus.max_bytes": 600},
                                    "error: the corpus is empty or too small under corpus.max_bytes=600"),
    "more held out than the pool": ("data_prep/sft", "tiny", {"max_operand": 19},
                                    "error: held_out=200 but operands 10..19 leave only"),
    "pretrain hub offline": ("data_prep/pretrain", "default", {},
                             "error: cannot read hub dataset nvidia/Nemotron-CC-v2 (split train)"),
    "sft hub offline": ("data_prep/sft", "default", {},
                        "error: cannot read hub dataset nvidia/Nemotron-Post-Training-Dataset-v2 (split chat)"),
    "rl hub offline": ("data_prep/rl", "default", {},
                       "error: cannot read hub dataset nvidia/Nemotron-3-Nano-RL-Training-Blend (split train)"),
}


def test_bad_inputs_fail_clearly_and_publish_nothing(tmp_path: Path) -> None:
    """Run side by side: each case costs a process start, not a computation."""
    running = {}
    for case, (stage, base, overrides, _) in BAD_INPUTS.items():
        folder = tmp_path / case.replace(" ", "_")
        config = write_resolved_config(folder / "config.yaml", stage, config_path(stage, base), folder / "out",
                                       folder / "work", overrides=overrides)
        running[case] = start_recipe(stage, config)
    for case, (_, _, _, message) in BAD_INPUTS.items():
        run = wait(running[case])
        assert run.returncode != 0, case
        assert message in run.stderr, f"{case}: {run.stderr[-2000:]}"
        assert "Traceback" not in run.stderr, case
        assert not (tmp_path / case.replace(" ", "_") / "out" / "manifest.json").exists(), case

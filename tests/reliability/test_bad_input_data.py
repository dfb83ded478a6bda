"""Bad configs and bad input data, through `python -m flows.nano3` as users run it.

tests/test_bad_input.py covers env.toml, overrides and the command line; this adds the recipe
configs and the artifacts a stage consumes: missing, of the wrong type, corrupted after
publishing, an empty JSONL file, a malformed JSONL line. Each case must give one error line
(naming the config file and the `run.<input>` key, the artifact and the file), exit with 2,
print no traceback, and leave the store, the registry and HOME exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from recipes.nano3.manifest import MANIFEST_NAME, FileEntry, Manifest
from tasks.artifacts import ArtifactStore
from tests.conftest import run_cli, tree

CHAT = json.dumps({"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]})


def publish(store: ArtifactStore, name: str, kind: str, files: dict[str, bytes], stage: str = "made-by-hand") -> Path:
    """An artifact as a stage leaves it: files, manifest.json, a registry version."""
    key = hashlib.sha256(f"{name}{sorted(files.items())}".encode()).hexdigest()[:32]
    folder = Path(store.output_url(stage, key))
    folder.mkdir(parents=True)
    for path, data in files.items():
        (folder / path).write_bytes(data)
    manifest = Manifest(type=kind, stage=stage, files=[
        FileEntry(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data)) for path, data in sorted(files.items())])
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json())
    store.publish(name, str(folder), manifest, cache_key=key)
    return folder


def binidx(store: ArtifactStore) -> Path:
    return publish(store, "nano3-pretrain-data", "binidx", {
        "train_text_document.bin": bytes(range(256)) * 8, "train_text_document.idx": b"MMIDIDX\x00\x00" + b"\x01" * 40,
        "blend.json": b'{"train": [1.0, "train_text_document"]}'})


def sft_inputs(train: bytes) -> Callable[[ArtifactStore], None]:
    def setup(store: ArtifactStore) -> None:
        publish(store, "nano3-pretrain-model", "checkpoint_hf", {"config.json": b"{}", "model.safetensors": b"\x00" * 64})
        publish(store, "nano3-sft-data", "training_jsonl", {"train.jsonl": train, "valid.jsonl": (CHAT + "\n").encode()})
    return setup


def corrupt_bin(store: ArtifactStore) -> None:
    folder = binidx(store)
    data = bytearray((folder / "train_text_document.bin").read_bytes())
    data[100] ^= 0xFF
    (folder / "train_text_document.bin").write_bytes(bytes(data))


def write_config(name: str, text: str) -> Callable[[ArtifactStore], None]:
    def setup(store: ArtifactStore) -> None:
        Path(name).write_text(text)
    return setup


PRETRAIN_TINY = Path(__file__).resolve().parents[2] / "recipes" / "nano3" / "pretrain" / "config" / "tiny.yaml"

CASES = [
    # (id, what is in the store or the folder, arguments, what the one error line names)
    ("missing-artifact", lambda store: None, ["--stages", "pretrain"],
     ["pretrain/config/tiny.yaml", "run.data", "nano3-pretrain-data:latest not found",
      "nemotron nano3 data prep pretrain` publishes it"]),
    ("missing-version", binidx, ["--stages", "pretrain", "run.data=nano3-pretrain-data:v7"],
     ["run.data", "nano3-pretrain-data:v7 not found", "versions: v1"]),
    ("wrong-artifact-type", lambda store: publish(store, "nano3-pretrain-data", "training_jsonl",
                                                  {"train.jsonl": (CHAT + "\n").encode()}),
     ["--stages", "pretrain"], ["run.data", "nano3-pretrain-data:v1 is of type training_jsonl, expected binidx"]),
    ("corrupted-bin", corrupt_bin, ["--stages", "pretrain"],
     ["pretrain/config/tiny.yaml", "run.data", "nano3-pretrain-data:v1", "file train_text_document.bin is corrupted",
      "remove "]),
    ("empty-jsonl", sft_inputs(b""), ["--stages", "sft"],
     ["sft/config/tiny.yaml", "run.data", "nano3-sft-data:v1", "file train.jsonl is empty"]),
    ("malformed-jsonl-line", sft_inputs(f'{CHAT}\n{{"messages": [\n{CHAT}\n'.encode()), ["--stages", "sft"],
     ["sft/config/tiny.yaml", "run.data", "nano3-sft-data:v1", "train.jsonl line 2 is not JSON"]),
    ("jsonl-line-not-an-object", sft_inputs(f"{CHAT}\n[1, 2]\n".encode()), ["--stages", "sft"],
     ["run.data", "train.jsonl line 2 is not a JSON object"]),
    ("malformed-config", write_config("broken.yaml", "run:\n  data: [unclosed\n"), ["--stages", "pretrain", "-c", "broken.yaml"],
     ["broken.yaml", "malformed YAML"]),
    ("config-not-a-mapping", write_config("list.yaml", "- a\n- b\n"), ["--stages", "pretrain", "-c", "list.yaml"],
     ["list.yaml", "expected a mapping"]),
    ("config-bad-reference", write_config("ref.yaml", PRETRAIN_TINY.read_text().replace(
        "data: nano3-pretrain-data:latest", "data: nano3 pretrain data")), ["--stages", "pretrain", "-c", "ref.yaml"],
     ["ref.yaml", "run.data", "'nano3 pretrain data' is not name[:latest|:vN|:alias]"]),
    ("config-missing-file", lambda store: None, ["--stages", "pretrain", "-c", "nowhere.yaml"],
     ["--config", "nowhere.yaml does not exist"]),
]


@pytest.mark.parametrize(("case", "setup", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_or_input_data_gives_one_clear_error(isolated: Path, case: str, setup: Callable, args: list[str],
                                                        expected: list[str]) -> None:
    store = ArtifactStore(str(isolated / "store"))
    setup(store)
    before = tree(isolated)
    registry = sorted(p.name for p in Path(store.root, "_registry").rglob("*")) if Path(store.root).exists() else []
    result = run_cli(args, isolated, env={"NANO3_ARTIFACTS_ROOT": store.root, "WANDB_MODE": "offline"})
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    assert tree(isolated) == before, "bad input must leave nothing behind"
    after = sorted(p.name for p in Path(store.root, "_registry").rglob("*")) if Path(store.root).exists() else []
    assert after == registry, "no registry entry"

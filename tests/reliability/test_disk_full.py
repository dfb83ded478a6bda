"""A full disk under the artifact store: one clear error naming the store and the artifact, the
registry and `latest` untouched, no half-written file left, and once space is freed the rerun
finishes without redoing the stages that had finished.

The store lives on a small tmpfs the test mounts (root only, as the Slurm tests need); a filler
file takes the space a test wants gone.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recipes.nano3.manifest import MANIFEST_NAME, FileEntry, Manifest
from tasks.artifacts import ArtifactStore, StoreFull
from tests.reliability.runs import Sandbox, journal, registry_problems, versions

#: The tmpfs, and the toy model's padding: it fits an empty disk, not one filled to LEFT_KB.
DISK_KB, PAD_KB, LEFT_KB = 4096, 1024, 256


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "store"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_KB}k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(disk: Path, leave_kb: int = 0) -> Path:
    """A filler file that takes all the free space but `leave_kb` KiB."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    size = max(0, stats.f_bavail * stats.f_frsize - leave_kb * 1024)
    with filler.open("ab") as out:
        try:
            out.write(b"\0" * size)
            out.flush()
        except OSError:  # the last page: what tmpfs reports free is not all writable
            pass
    return filler


def leftovers(store_root: Path) -> list[str]:
    return sorted(str(p.relative_to(store_root)) for p in store_root.rglob("*.tmp"))


def output(store: ArtifactStore, key: str, text: str) -> tuple[str, Manifest]:
    folder = store.output_url("made", key)
    data = text.encode()
    Path(folder).mkdir(parents=True)
    Path(folder, "data.txt").write_bytes(data)
    manifest = Manifest(type="raw_jsonl", stage="made",
                        files=[FileEntry(path="data.txt", sha256=hashlib.sha256(data).hexdigest(), size=len(data))])
    Path(folder, MANIFEST_NAME).write_text(manifest.model_dump_json())
    return folder, manifest


def test_a_publish_on_a_full_store_names_it_and_changes_nothing(small_disk: Path) -> None:
    store = ArtifactStore(str(small_disk))
    first = store.publish("made", *output(store, "a", "first\n"), cache_key="a")
    second_url, second = output(store, "b", "second\n")
    filler = fill(small_disk)
    registry = sorted(p.name for p in (small_disk / "_registry" / "made").iterdir())
    with pytest.raises(StoreFull) as raised:
        store.publish("made", second_url, second, cache_key="b")
    assert str(raised.value) == (
        f"no space left in the artifact store {small_disk} to publish artifact made ({second_url}): "
        "No space left on device; its registry and `latest` are unchanged"
    )
    assert sorted(p.name for p in (small_disk / "_registry" / "made").iterdir()) == registry
    assert store.latest("made") == first and leftovers(small_disk) == []
    filler.unlink()
    assert store.publish("made", second_url, second, cache_key="b").version == "v2"
    assert store.latest("made").digest == second.digest  # type: ignore[union-attr]


@pytest.mark.timeout(600)
def test_a_full_store_fails_the_stage_once_and_the_rerun_after_freeing_space_finishes(
        small_disk: Path, tmp_path: Path, prefect_api: str) -> None:
    sandbox = Sandbox(tmp_path, prefect_api)
    store = sandbox.store
    assert Path(store.root) == small_disk
    padded = f"toy/train:pad_kb={PAD_KB}"

    # 1. Room for the first stage, not for the model: the train job dies writing it.
    filler = fill(small_disk, leave_kb=LEFT_KB)
    code, _ = sandbox.run(padded)
    assert code != 0
    log = sandbox.log()
    expected = f"toy/train: no space left for artifact toy-model in the artifact store {store.root} (job "
    assert expected in log and "No space left on device" in log.split(expected, 1)[1].splitlines()[0], log[-3000:]
    assert "Retry" not in log, "a full store is not retried"
    assert versions(store) == {"toy-numbers": 1}
    numbers = store.latest("toy-numbers")

    # 2. No room at all: the orchestrator's own writes fail; the same error, nothing changed.
    fill(small_disk)
    before = len(sandbox.log())
    code, _ = sandbox.run(padded)
    assert code != 0 and expected.split(" (job")[0] in sandbox.log()[before:], sandbox.log()[-3000:]
    assert versions(store) == {"toy-numbers": 1} and store.latest("toy-numbers") == numbers
    assert leftovers(small_disk) == [] and registry_problems(store) == []

    # 3. Space freed, the same command: only what had not finished runs.
    filler.unlink()
    code, results = sandbox.run(padded)
    assert code == 0, sandbox.log()[-3000:]
    assert [r["status"] for r in results] == ["cached", "ran", "ran"]
    assert versions(store) == {"toy-numbers": 1, "toy-model": 1, "toy-total": 1}
    assert registry_problems(store) == [] and leftovers(small_disk) == []
    assert len(journal(store)["toy/produce"]) == 1, "the finished stage was not redone"

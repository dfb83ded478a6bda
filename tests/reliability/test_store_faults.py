"""Faults of the artifact store under a run: its S3 server restarted, its disk full.

S3 down while a stage's job uploads its output, and while the orchestrator publishes: each call
waits for the store to come back (saying so), the registry never names a partial artifact,
nothing is submitted twice, and the rerun finds every digest intact.

A full disk (a small tmpfs the test mounts: root only, as the Slurm tests need; a filler file
takes the space a test wants gone): one clear error naming the store and the artifact, the
registry and `latest` untouched, no half-written file left, and once space is freed the rerun
finishes without redoing the stages that had finished.

One module, so one Prefect test server for both.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks.settings import ArtifactsConfig
from recipes.nano3.manifest import MANIFEST_NAME, FileEntry, Manifest
from tasks.artifacts import ArtifactStore, StoreFull, open_store
from tests.reliability.runs import Sandbox, journal, registry_problems, versions
from tests.reliability.toy_pipeline import TOY_STAGES

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "dev"))
from local_s3 import S3Server, start_s3, stop_s3  # noqa: E402

pytestmark = pytest.mark.timeout(600)

#: How long the S3 server stays down.
DOWN_SECONDS = 20.0
#: The tmpfs, and the toy model's padding: it fits an empty disk, not one filled to LEFT_KB.
DISK_KB, PAD_KB, LEFT_KB = 4096, 1024, 256


def write_output(store: ArtifactStore, key: str, text: str) -> tuple[str, Manifest]:
    """A finished stage output in the store (its file, then its manifest): what publish takes."""
    data = text.encode()
    folder = store._path("made", key)
    store.fs.makedirs(folder, exist_ok=True)
    store.fs.pipe_file(f"{folder}/data.txt", data)
    manifest = Manifest(type="raw_jsonl", stage="made",
                        files=[FileEntry(path="data.txt", sha256=hashlib.sha256(data).hexdigest(), size=len(data))])
    store.fs.pipe_file(f"{folder}/{MANIFEST_NAME}", manifest.model_dump_json().encode())
    return store.output_url("made", key), manifest


# --- S3 restarted ---------------------------------------------------------------------------
def restart_later(server: S3Server, *, when: Callable[[], bool], after: float,
                  down: float = DOWN_SECONDS) -> threading.Thread:
    """`after` seconds once `when()` holds: stop the server, wait `down` seconds, start it again
    on the same port."""

    def bounce() -> None:
        deadline = time.monotonic() + 240
        while not when():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(after)
        stop_s3(Path(server.dir))
        time.sleep(down)
        start_s3(Path(server.dir), server.access_key, server.secret_key, bucket=server.bucket)

    thread = threading.Thread(target=bounce, daemon=True)
    thread.start()
    return thread


def s3_store(server: S3Server) -> tuple[ArtifactsConfig, ArtifactStore]:
    settings = ArtifactsConfig(root=f"s3://{server.bucket}/{uuid.uuid4().hex[:12]}", endpoint_url=server.endpoint,
                               access_key_id=server.access_key, secret_access_key=SecretStr(server.secret_key))
    return settings, open_store(settings)


def test_a_publish_waits_for_the_store_to_come_back(s3_server: S3Server, capsys: pytest.CaptureFixture[str]) -> None:
    _, store = s3_store(s3_server)
    folder, manifest = write_output(store, "k1", "published through an outage\n")

    # Down for longer than the S3 client's own retries last (3-10 s): past them, the store's.
    stop_s3(Path(s3_server.dir))
    bouncer = threading.Thread(target=lambda: (time.sleep(DOWN_SECONDS), start_s3(
        Path(s3_server.dir), s3_server.access_key, s3_server.secret_key, bucket=s3_server.bucket)))
    bouncer.start()
    version = store.publish("made", folder, manifest, cache_key="k1")
    bouncer.join()
    assert version.version == "v1" and store.latest("made") == version
    assert [Path(p).name for p in store.fs.ls(store._path("_registry", "made"), detail=False)] == ["latest.json", "v1.json"]
    told = capsys.readouterr().err
    assert "the artifact store did not answer (Could not connect to the endpoint URL" in told
    assert "the artifact store answers again after" in told


@pytest.mark.slow
def test_a_job_uploading_through_a_store_restart_is_neither_failed_nor_repeated(
        s3_server: S3Server, isolated: Path, prefect_api: str) -> None:
    settings, store = s3_store(s3_server)
    sandbox = Sandbox(isolated, prefect_api)
    work = isolated / "work"
    work.mkdir(exist_ok=True)
    (work / "env.toml").write_text(
        f'[artifacts]\nroot = "{settings.root}"\nendpoint_url = "{settings.endpoint_url}"\n'
        f'access_key_id = "{settings.access_key_id}"\nsecret_access_key = "{s3_server.secret_key}"\n'
    )
    scratch = isolated / "scratch"
    journals = lambda stage: list(scratch.glob(f"work/**/_work/{stage}/*/jobs.jsonl"))  # noqa: E731
    extra: dict[str, str | None] = {"NANO3_ARTIFACTS_ROOT": None, "NANO3_SCRATCH": str(scratch)}
    # The producer's job counts for 6 s; the store goes down 2 s after it starts and is back
    # DOWN_SECONDS later: the upload at its end meets the outage.
    bounce = restart_later(s3_server, when=lambda: bool(journals("toy-produce")), after=2.0)
    code, results = sandbox.run("toy/produce:steps=6", "toy/produce:sleep=1.0", **extra)
    bounce.join(timeout=120)
    assert code == 0, sandbox.log()[-3000:]
    assert [r["status"] for r in results] == ["ran", "ran", "ran"]
    log = sandbox.log()
    assert "upload of numbers.jsonl: the artifact store did not answer" in log, log[-3000:]
    assert "upload of numbers.jsonl: the artifact store answers again after" in log
    assert "Retry" not in log, "the stage did not fail and was not submitted again"
    starts = [line for path in journals("toy-produce") for line in path.read_text().splitlines()]
    assert len(starts) == 1, f"the producer's job started {len(starts)} times"

    # The registry names complete artifacts only, and the rerun finds every digest intact.
    for stage in TOY_STAGES:
        latest = store.latest(stage.artifact)
        assert latest is not None and latest.version == "v1"
        manifest = store.read_manifest(latest.uri)
        assert manifest is not None and manifest.digest == latest.digest
        store.verify(stage.artifact, latest.uri, manifest)
    code, results = sandbox.run("toy/produce:steps=6", "toy/produce:sleep=1.0", **extra)
    assert code == 0 and [r["status"] for r in results] == ["cached", "cached", "cached"], sandbox.log()[-3000:]


# --- disk full -----------------------------------------------------------------------------
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


def test_a_publish_on_a_full_store_names_it_and_changes_nothing(small_disk: Path) -> None:
    store = ArtifactStore(str(small_disk))
    first = store.publish("made", *write_output(store, "a", "first\n"), cache_key="a")
    second_url, second = write_output(store, "b", "second\n")
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


@pytest.mark.slow
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

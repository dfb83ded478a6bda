"""The S3 server under the artifact store restarted while a run uses it.

Down while a stage's job uploads its output, and down while the orchestrator publishes: each
call waits for the store to come back (saying so), the registry never names a partial artifact,
nothing is submitted twice, and the rerun finds every digest intact.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks.settings import ArtifactsConfig
from recipes.nano3.manifest import MANIFEST_NAME, FileEntry, Manifest
from tasks.artifacts import ArtifactStore, open_store
from tests.reliability.runs import Sandbox
from tests.reliability.toy_pipeline import TOY_STAGES

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "dev"))
from local_s3 import S3Server, start_s3, stop_s3  # noqa: E402

pytestmark = pytest.mark.timeout(600)

#: How long the S3 server stays down.
DOWN_SECONDS = 20.0


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
    data = b"published through an outage\n"
    folder = store.output_url("made", "k1")
    store.fs.pipe_file(f"{store._path('made', 'k1')}/data.txt", data)
    manifest = Manifest(type="raw_jsonl", stage="made",
                        files=[FileEntry(path="data.txt", sha256=hashlib.sha256(data).hexdigest(), size=len(data))])
    store.fs.pipe_file(f"{store._path('made', 'k1')}/{MANIFEST_NAME}", manifest.model_dump_json().encode())

    stop_s3(Path(s3_server.dir))
    bouncer = threading.Thread(target=lambda: (time.sleep(8), start_s3(Path(s3_server.dir), s3_server.access_key,
                                                                        s3_server.secret_key, bucket=s3_server.bucket)))
    bouncer.start()
    version = store.publish("made", folder, manifest, cache_key="k1")
    bouncer.join()
    assert version.version == "v1" and store.latest("made") == version
    assert [Path(p).name for p in store.fs.ls(store._path("_registry", "made"), detail=False)] == ["latest.json", "v1.json"]
    told = capsys.readouterr().err
    assert "the artifact store did not answer (Could not connect to the endpoint URL" in told
    assert "the artifact store answers again after" in told


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

"""The generic stage task on a real Prefect server and NeMo-Run's LocalExecutor, with toy recipes.

The toy recipes (tests/toy_recipes/) keep to the recipe contract but take a second, so these
tests pin the orchestration: caching, publishing, digests, retries, resume, lineage, W&B.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow

from blocks.profiles import LocalProfile
from flows.pipeline import execute_stages
from tasks.artifacts import ArtifactError, ArtifactStore
from tasks.job_config import build_job_config, parse_overrides
from tasks.stage_task import StageFailed, prepare_stage, run_stage
from tasks.submit import submit_and_wait
from tasks.stages import Stage

TOYS = Path(__file__).resolve().parent / "toy_recipes"
PRODUCE = Stage(id="toy/produce", folder="produce", script="produce.py", consumes=(), produces="raw_jsonl",
                artifact="toy-numbers", root=TOYS)
CONSUME = Stage(id="toy/consume", folder="consume", script="consume.py", consumes=(("data", "raw_jsonl"),),
                produces="eval_results", artifact="toy-total", root=TOYS)


@pytest.fixture(scope="module", autouse=True)
def prefect_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def store(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArtifactStore]:
    from nemo_run.config import get_nemorun_home, set_nemorun_home

    previous = get_nemorun_home()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NEMORUN_HOME", str(isolated / "nemo_run"))
    set_nemorun_home(str(isolated / "nemo_run"))
    yield ArtifactStore(str(isolated / "store"))
    set_nemorun_home(previous)


def jobs(*overrides: str, produce: tuple[str, ...] = ()) -> list:
    def job(stage: Stage, extra: tuple[str, ...]):
        return build_job_config(stage, "tiny", profile=LocalProfile(), profile_name="local", profile_origin="test",
                                overrides=parse_overrides(extra))
    return [job(PRODUCE, produce), job(CONSUME, overrides)]


@flow
def toy_flow(stage_jobs: list, store: ArtifactStore) -> list:
    return execute_stages(stage_jobs, store, None)


def records(store: ArtifactStore) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(store.root, "_runs").glob("*.json"))]


def test_run_publishes_then_rerun_is_cached(store: ArtifactStore) -> None:
    first = toy_flow(jobs(), store)
    assert [r.status for r in first] == ["ran", "ran"]
    assert first[1].artifact.metrics == {"total": 6}  # (0 + 2 + 4) * 1
    assert [r.artifact.version for r in first] == ["v1", "v1"]
    assert store.resolve("toy-total:latest").digest == first[1].artifact.digest
    assert first[1].inputs["data"].ref == "toy-numbers:v1"
    submissions = records(store)
    assert len(submissions) == 2

    second = toy_flow(jobs(), store)
    assert [r.status for r in second] == ["cached", "cached"]
    assert [r.artifact.ref for r in second] == ["toy-numbers:v1", "toy-total:v1"]
    assert records(store) == submissions, "a cached rerun submits nothing"


def task_run_states(flow_state) -> dict[str, str]:  # noqa: ANN001 - a flow run's State
    """Each stage's task run state, as the Prefect server holds it (what the UI shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
    deadline = time.monotonic() + 30  # task run states may reach the server after the flow returns
    while True:
        with get_client(sync_client=True) as client:
            states = {run.name: run.state.name for run in client.read_task_runs(flow_run_filter=flow_run) if run.state}
        if (len(states) == 2 and "Running" not in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_prefect_records_the_first_run_and_shows_a_rerun_as_cached(store: ArtifactStore) -> None:
    first = toy_flow(jobs(), store, return_state=True)
    assert [r.status for r in first.result()] == ["ran", "ran"]
    assert task_run_states(first) == {"toy/produce": "Completed", "toy/consume": "Completed"}

    second = toy_flow(jobs(), store, return_state=True)
    assert [r.status for r in second.result()] == ["cached", "cached"]
    assert task_run_states(second) == {"toy/produce": "Cached", "toy/consume": "Cached"}

    # Prefect still holds the producer's result, but its output is gone: it is not cached.
    numbers = second.result()[0].artifact
    shutil.rmtree(numbers.uri)
    third = toy_flow(jobs(), store, return_state=True)
    assert [r.status for r in third.result()] == ["ran", "cached"]
    assert task_run_states(third) == {"toy/produce": "Completed", "toy/consume": "Cached"}
    assert store.read_manifest(numbers.uri) is not None
    journal = Path(store.root, "_work", "toy-produce", numbers.cache_key, "jobs.jsonl")
    assert len(journal.read_text().splitlines()) == 2, "the producer's job ran again"

    # ... and its new result replaced Prefect's record: the next run is Cached again.
    fourth = toy_flow(jobs(), store, return_state=True)
    assert task_run_states(fourth) == {"toy/produce": "Cached", "toy/consume": "Cached"}


def test_changing_a_downstream_override_reruns_only_downstream(store: ArtifactStore) -> None:
    toy_flow(jobs(), store)
    again = toy_flow(jobs("factor=3"), store)
    assert [r.status for r in again] == ["cached", "ran"]
    assert again[1].artifact.metrics["total"] == 18 and again[1].artifact.version == "v2"
    upstream = toy_flow(jobs(produce=("scale=5",)), store)
    assert [r.status for r in upstream] == ["ran", "ran"]


def prefect_logs() -> str:
    """Every log line the Prefect server holds: what the UI shows for the runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        return "\n".join(log.message for log in client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC))


def test_a_local_job_s_last_lines_all_arrive(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # No wait for the log to go quiet after a local job: its log file is complete once NeMo-Run
    # reports the end. A job that prints 3,000 lines as it exits loses none of them.
    monkeypatch.setenv("PYTHONUNBUFFERED", "")
    job = jobs(produce=("chatter=3000",))[0]
    prepared = prepare_stage(job, store, {})
    lines: list[str] = []
    outcome = submit_and_wait(job, resolved_config=prepared.resolved_yaml, cache_key=prepared.cache_key,
                              work_dir=prepared.work_url, store=store, wandb=None, detached=False, on_line=lines.append)
    assert outcome.succeeded
    assert [line for line in lines if line.startswith("chatter ")] == [f"chatter {i}" for i in range(3000)]
    assert lines[-1].startswith("manifest: ")


class Recorder(logging.Handler):
    """Stands for Prefect's console handler on the root logger."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((str(getattr(record, "task_run_name", "")), record.getMessage()))


def test_every_stage_s_job_lines_reach_the_console_handler(store: ArtifactStore) -> None:
    """A NeMo-Run Experiment replaces the root logger's handlers when created and removes one when
    garbage-collected: the console used to lose the job lines of some stages. Flows and
    collections later, the root handlers are the ones set before, and they saw every stage's
    job lines."""
    root = logging.getLogger()
    console = Recorder()
    root.addHandler(console)
    before, level = list(root.handlers), root.level
    try:
        for factor in (2, 3):
            toy_flow(jobs(f"factor={factor}", produce=(f"scale={factor}",)), store)
            gc.collect()
            assert root.handlers == before and root.level == level
    finally:
        root.removeHandler(console)
    for stage in ("toy/produce", "toy/consume"):
        manifests = [message for name, message in console.lines if name == stage and message.startswith("manifest: ")]
        assert len(manifests) == 2, (stage, console.lines[-20:])


def test_failure_is_retried_and_resumes_from_checkpoint(store: ArtifactStore) -> None:
    results = toy_flow(jobs(produce=("steps=4", "fail_at=3")), store)
    assert results[0].status == "ran"
    produced = store.resolve("toy-numbers:latest")
    work = Path(store.root, "_work", "toy-produce", produced.cache_key)
    assert (work / "failed_once").exists()
    record = store.read_record(produced.cache_key)
    assert record is not None and record.attempt == 2
    logs = prefect_logs()
    assert "injected failure at step 3" in logs and "resumed from step 2" in logs
    assert "step 4/4 value=8" in logs  # progress lines arrive as readable log lines


def test_a_job_that_keeps_failing_fails_the_task_with_its_log(store: ArtifactStore) -> None:
    from tasks.stage_task import prepare_stage

    job = jobs(produce=("fail_at=1",))[0]
    prepared = prepare_stage(job, store, {})
    # Remove the marker logic's memory each time: fail every attempt.
    marker = Path(prepared.work_url) / "failed_once"

    @flow
    def failing() -> None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        run_stage.with_options(retries=0)(prepared, store, None)

    with pytest.raises(StageFailed) as info:
        failing()
    assert "ended FAILED without a manifest" in str(info.value)
    assert "injected failure at step 1" in str(info.value)
    assert not Path(prepared.output_url, "manifest.json").exists()
    with pytest.raises(ArtifactError, match="toy-numbers:latest not found"):
        store.resolve("toy-numbers:latest")


def test_corrupted_output_is_detected_by_name(store: ArtifactStore) -> None:
    first = toy_flow(jobs(), store)
    numbers = Path(first[0].artifact.uri) / "numbers.jsonl"
    numbers.write_text(numbers.read_text() + "{}\n")
    with pytest.raises(ArtifactError, match=r"artifact toy-numbers: file numbers.jsonl is corrupted"):
        toy_flow(jobs(), store)


def test_prefect_artifacts_and_wandb_mirror(store: ArtifactStore) -> None:
    from prefect.client.orchestration import get_client

    toy_flow(jobs(), store)
    with get_client(sync_client=True) as client:
        lineage = client.read_latest_artifacts()
        by_key = {a.key: a for a in lineage if a.key}
    assert "toy-numbers:v1" in by_key["toy-consume-lineage"].data
    assert "toy-total:v1" in by_key["toy-consume-lineage"].data
    assert "graph LR" in by_key["nano3-lineage"].data and "toy-numbers-v1 -->|toy/consume| toy-total-v1" in by_key["nano3-lineage"].data
    table = by_key["toy-consume-metrics"].data
    assert "total" in json.dumps(table)
    assert by_key["toy-produce-progress"].data == 100.0
    wandb_runs = list(Path(store.root, "_wandb").rglob("run-*.wandb"))
    assert len(wandb_runs) == 2
    assert any(b"toy-total" in p.read_bytes() for p in wandb_runs)
    # A rerun finds both outputs and publishes nothing new: it mirrors nothing again.
    assert [r.status for r in toy_flow(jobs(), store)] == ["cached", "cached"]
    assert len(list(Path(store.root, "_wandb").rglob("run-*.wandb"))) == 2


def test_each_output_is_a_prefect_asset_materialized_from_its_inputs(store: ArtifactStore) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from tasks.lineage import asset_key

    results = toy_flow(jobs("factor=7"), store)
    numbers, total = (r.artifact for r in results)
    expected = {asset_key(numbers.uri), asset_key(total.uri)}
    deadline = time.monotonic() + 30  # events reach the server asynchronously
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.asset.materialization.succeeded"])), limit=50)
        by_key = {e.resource.id: e for e in page.events}
        if expected <= by_key.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    materialized = by_key[asset_key(total.uri)]
    assert materialized.resource.get("prefect.resource.name") == "toy-total"
    upstream = [r.id for r in materialized.related if r.role == "asset"]
    assert upstream == [asset_key(numbers.uri)], "the consumer's asset depends on the producer's"
    assert materialized.payload["artifact"] == total.ref and materialized.payload["digest"] == total.digest
    assert materialized.payload["metrics"] == {"total": 42}
    assert [r.id for r in by_key[asset_key(numbers.uri)].related if r.role == "asset"] == []


def test_a_local_job_gets_its_secrets_and_nemo_run_keeps_none(store: ArtifactStore, isolated: Path) -> None:
    from blocks.profiles import parse_profile

    secret = "hf_planted_secret_5150"
    local = parse_profile({"executor": "local", "env_vars": {"HF_TOKEN": secret}}, file="env.toml", section="local")
    job = build_job_config(PRODUCE, "tiny", profile=local, profile_name="local", profile_origin="test",
                           overrides=parse_overrides(("scale=13",)))
    (result,) = toy_flow([job], store)
    manifest = store.read_manifest(result.artifact.uri)
    assert manifest is not None and manifest.metadata["hf_token_length"] == len(secret), "the job saw its secret"
    written = [p for p in (isolated / "nemo_run").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert written == [], f"NeMo-Run wrote the secret to {written}"

"""Exactly-once when the Prefect server, or its PostgreSQL, restarts while a stage's job runs.

One PostgreSQL, one Prefect server on it, the process work pool, a deployment of the toy pipeline
(tests/reliability/toy_pipeline.py) and a real `prefect worker start`, shared by both scenarios.
Each scenario triggers a run through the API (its own artifact store, through the run's job
variables), waits until the toy training job has written a checkpoint, then takes the server (or
PostgreSQL) down and brings it back on the same port with the same data, while the job runs on.
The run must end Completed on its own, every stage submitted once (one job start, submission
record attempt 1), its artifacts published once with digests that verify, and its lineage and
progress on the server as a run without an outage publishes them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tasks.artifacts import ArtifactStore
from tasks.stages import PROJECT_ROOT
from tests.infra.conftest import own_postgres  # also puts scripts/dev on sys.path
from tests.infra.test_deployments import prefect_cli, prefect_env, run_artifacts
from tests.prefect_server import PrefectServer, background, prefect_client
from tests.reliability.runs import journal, registry_problems, versions
from tests.reliability.toy_pipeline import FLOW_NAME, TOY_STAGES

from local_postgres import PostgresServer, start_postgres, stop_postgres  # noqa: E402

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

POOL = "nano3-restart"
DEPLOYMENT_NAME = "server-restart"
DEPLOYMENT = f"{FLOW_NAME}/{DEPLOYMENT_NAME}"
ENTRYPOINT = "tests/reliability/toy_pipeline.py:toy_pipeline"
TRAIN = "toy/train"
#: Numbers 0, 2, 4: the training job adds 6 a step, TRAIN_SLEEP seconds each.
PRODUCE = ("toy/produce:steps=3",)
TRAIN_SLEEP = 3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def postgres() -> Iterator[tuple[Path, PostgresServer]]:
    """A PostgreSQL of this module's own: it is restarted."""
    with own_postgres("nano3-restart-postgres-") as found:
        yield found


@pytest.fixture(scope="module")
def server(postgres: tuple[Path, PostgresServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"), database_url=postgres[1].url)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def worker_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("restart-worker")


@pytest.fixture(scope="module")
def worker(server: PrefectServer, worker_home: Path) -> Iterator[subprocess.Popen]:
    """The pool, the toy pipeline's deployment on it, and `prefect worker start --pool`."""
    operator = prefect_env(worker_home / "operator", server.url)
    prefect_cli(operator, "work-pool", "create", POOL, "--type", "process")
    deploy = ("from tests.reliability.toy_pipeline import toy_pipeline\n"
              f"toy_pipeline.from_source({str(PROJECT_ROOT)!r}, {ENTRYPOINT!r})"
              f".deploy({DEPLOYMENT_NAME!r}, work_pool_name={POOL!r}, build=False, push=False, print_next_steps=False)\n")
    done = subprocess.run([sys.executable, "-c", deploy], cwd=PROJECT_ROOT, env=operator, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    env = prefect_env(worker_home, server.url, NANO3_PROJECT_DIR=str(PROJECT_ROOT), WANDB_MODE="disabled",
                      PYTHONPATH=str(PROJECT_ROOT), PREFECT_WORKER_QUERY_SECONDS="5")
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", "restart-worker"]
    with background(command, env, worker_home / "worker.log", cwd=PROJECT_ROOT) as process:
        yield process


@dataclass
class Outcome:
    flow_run: FlowRun
    store: ArtifactStore
    #: What the run printed (the worker's log from the trigger on): its stages' log lines.
    log: str
    seconds: float
    down_seconds: float


def run_through_an_outage(server: PrefectServer, worker: subprocess.Popen, worker_home: Path, folder: Path,
                          train_steps: int, outage: Callable[[], None]) -> Outcome:
    """Trigger a run, inject `outage` once the training job has written a checkpoint, wait for the end."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    store = ArtifactStore(str(folder / "store"))
    log = worker_home / "worker.log"
    offset = log.stat().st_size
    overrides = [*PRODUCE, f"toy/train:steps={train_steps}", f"toy/train:sleep={TRAIN_SLEEP}"]
    started = time.monotonic()
    with temporary_settings({PREFECT_API_URL: server.url}):
        flow_run = run_deployment(DEPLOYMENT, parameters={"overrides": overrides}, timeout=0, job_variables={
            "env": {"NANO3_ARTIFACTS_ROOT": store.root, "NEMORUN_HOME": str(folder / "nemorun")}})
    deadline = time.monotonic() + 300
    while not list(Path(store.root, "_work", "toy-train").glob("*/checkpoints/step_*")):
        assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[offset:][-4000:]
        time.sleep(0.2)
    down = time.monotonic()
    outage()
    down_seconds = time.monotonic() - down
    assert worker.poll() is None, f"the worker exited during the outage:\n{log.read_text()[offset:][-4000:]}"
    with prefect_client(server.url) as client:
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            if flow_run.state is not None and flow_run.state.is_final():
                break
            assert time.monotonic() < deadline, f"still {flow_run.state}:\n{log.read_text()[offset:][-4000:]}"
            time.sleep(1)
    return Outcome(flow_run, store, log.read_text(errors="replace")[offset:], time.monotonic() - started, down_seconds)


def check_exactly_once(server: PrefectServer, outcome: Outcome) -> None:
    """Completed; each stage submitted and started once, published once, digests verified; its
    lineage, progress and asset materializations on the server; progress skipped and resumed."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    store = outcome.store
    with prefect_client(server.url) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[outcome.flow_run.id])))
    by_key = run_artifacts(server.url, outcome.flow_run)
    records = [store.read_record(p.stem) for p in Path(store.root, "_runs").glob("*.json")]
    jobs = journal(store)
    published = {s.id: store.latest(s.artifact) for s in TOY_STAGES}
    materialized = asset_materializations(server, {s.id: v.uri for s, v in zip(TOY_STAGES, published.values()) if v})

    assert outcome.flow_run.state.is_completed(), f"{outcome.flow_run.state}:\n{outcome.log[-4000:]}"
    # One submission (attempt 1) and one job start per stage, none beside another or after the end.
    assert sorted((r.stage, r.attempt) for r in records) == sorted((s.id, 1) for s in TOY_STAGES)
    assert {stage: len(entries) for stage, entries in jobs.items()} == {s.id: 1 for s in TOY_STAGES}
    assert [e for entries in jobs.values() for e in entries if e["overlaps"] or e["output_done"]] == []
    # Published once, `latest` on it, every digest verified against the files; the results are right.
    assert versions(store) == {s.artifact: 1 for s in TOY_STAGES}
    assert registry_problems(store) == []
    assert {s: v.version for s, v in published.items()} == {s.id: "v1" for s in TOY_STAGES}
    steps = next(int(o.split("=")[1]) for o in outcome.flow_run.parameters["overrides"] if o.startswith("toy/train:steps="))
    assert published[TRAIN].metrics == {"weight": 6 * steps}
    # Prefect saw each stage run once (no task retry) and complete.
    assert sorted((t.name, t.state.type.value, t.run_count) for t in task_runs) == sorted(
        (s.id, "COMPLETED", 1) for s in TOY_STAGES)
    # Lineage, progress and asset materializations as a run without an outage publishes them.
    for stage in TOY_STAGES:
        lineage = by_key[f"{stage.id.replace('/', '-')}-lineage"].data
        assert f"## {stage.id} (ran)" in lineage and f"`{stage.artifact}:v1`" in lineage
        assert materialized[stage.id]["digest"] == published[stage.id].digest
    assert "toy-numbers-v1 -->|toy/train| toy-model-v1" in by_key["nano3-lineage"].data
    assert by_key["toy-train-progress"].data == 100.0
    # The outage fell inside the training job: its progress was skipped once, then resumed.
    assert outcome.log.count("toy/train: progress not sent to the Prefect server") == 1, outcome.log[-4000:]
    assert outcome.log.count("toy/train: the Prefect server answers again") == 1, outcome.log[-4000:]


def asset_materializations(server: PrefectServer, uris: dict[str, str]) -> dict[str, dict]:
    """The payload of each stage's asset materialization event (the server stores events in batches)."""
    from prefect.events.filters import EventFilter, EventNameFilter

    from tasks.lineage import asset_key

    wanted = {asset_key(uri): stage for stage, uri in uris.items()}
    deadline = time.monotonic() + 60
    with prefect_client(server.url) as client:
        while True:
            events = client.read_events(
                EventFilter(event=EventNameFilter(name=["prefect.asset.materialization.succeeded"])), limit=50).events
            found = {wanted[e.resource.id]: dict(e.payload) for e in events if e.resource.id in wanted}
            if len(found) == len(wanted) or time.monotonic() > deadline:
                return found
            time.sleep(1)


def report(fault: str, outcome: Outcome) -> None:
    print(f"\n{fault}: down {outcome.down_seconds:.1f} s (until the API answered again), run "
          f"{outcome.seconds:.1f} s from trigger to {outcome.flow_run.state.name}")


def test_a_run_completes_exactly_once_across_a_prefect_server_restart(server: PrefectServer, worker: subprocess.Popen,
                                                                      worker_home: Path, tmp_path: Path) -> None:
    outcome = run_through_an_outage(server, worker, worker_home, tmp_path, train_steps=20,
                                    outage=lambda: server.restart(down_seconds=30))
    report("Prefect server stopped 30 s, started again", outcome)
    check_exactly_once(server, outcome)


def test_a_run_completes_exactly_once_across_a_postgres_restart(server: PrefectServer, worker: subprocess.Popen,
                                                                postgres: tuple[Path, PostgresServer],
                                                                worker_home: Path, tmp_path: Path) -> None:
    folder, database = postgres

    def restart_postgres() -> None:
        assert stop_postgres(folder)
        time.sleep(20)
        assert start_postgres(folder, port=database.port).url == database.url

    outcome = run_through_an_outage(server, worker, worker_home, tmp_path, train_steps=14, outage=restart_postgres)
    report("PostgreSQL stopped 20 s, started again", outcome)
    check_exactly_once(server, outcome)

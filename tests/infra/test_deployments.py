"""The nano3 deployment as operators run it: a Prefect server on PostgreSQL, the process work pool
`nano3-process`, `prefect deploy` of deployments/prefect.yaml, a real `prefect worker start`, a run
triggered through the API, and the Prefect UI in headless Chromium showing that run.

One module-scoped server, deployment, worker and run; each test checks one side of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from deployments.serve import TIMEZONE, WEEKLY_CRON
from tasks.stages import PROJECT_ROOT
from tests.prefect_server import background, prefect_client, prefect_server

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import Artifact, FlowRun
    from prefect.client.schemas.responses import DeploymentResponse
    from selenium.webdriver.remote.webdriver import WebDriver

PREFECT_YAML = PROJECT_ROOT / "deployments" / "prefect.yaml"
POOL = "nano3-process"
DEPLOYMENT = "nano3/retrain"
#: The quickest stage (≈ 5 s on 2 cores): the whole path of a run, none of the training.
QUICK_STAGE = "data_prep/sft"

pytestmark = pytest.mark.timeout(900)


def prefect_env(folder: Path, api_url: str, **extra: str) -> dict[str, str]:
    """A process's environment: this server, and Prefect's and NeMo-Run's state under `folder`."""
    env = {k: v for k, v in os.environ.items() if k not in ("NEMOTRON_ENV_FILE", "PREFECT_PROFILE")}
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(folder / "prefect"), HOME=str(folder),
               NEMORUN_HOME=str(folder / "nemo_run"), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    folder.mkdir(parents=True, exist_ok=True)
    return env


def prefect_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def api_url(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ExitStack() as server, pytest.MonkeyPatch.context() as patch:
        # `prefect server start --port N` still tells its UI that the API is on port 4200; a
        # relative URL makes the UI call the server that served it.
        patch.setenv("PREFECT_UI_API_URL", "/api")
        home = tmp_path_factory.mktemp("prefect-server")
        url = server.enter_context(prefect_server(home, database_url=postgres_url))
        patch.undo()
        yield url


@pytest.fixture(scope="module")
def deployed(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The work pool and the deployment, made with the commands docs/deployments.md gives."""
    env = prefect_env(tmp_path_factory.mktemp("operator"), api_url)
    prefect_cli(env, "work-pool", "create", POOL, "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), "--all")
    return DEPLOYMENT


@pytest.fixture(scope="module")
def worker_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker")


@pytest.fixture(scope="module")
def worker(api_url: str, deployed: str, worker_home: Path) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool nano3-process`, its runs' artifacts kept in its own folder."""
    env = prefect_env(worker_home, api_url, NANO3_PROJECT_DIR=str(PROJECT_ROOT),
                      NANO3_ARTIFACTS_ROOT=str(worker_home / "store"), WANDB_MODE="offline",
                      # Poll every second rather than every 10 s: the test waits on it.
                      PREFECT_WORKER_QUERY_SECONDS="1")
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", "test-worker"]
    with background(command, env, worker_home / "worker.log", cwd=PROJECT_ROOT) as process:
        yield process


@pytest.fixture(scope="module")
def retrain_run(api_url: str, worker: subprocess.Popen, worker_home: Path) -> FlowRun:
    """A run of the deployment triggered through the API, as the UI's Run button does, finished."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        flow_run = run_deployment(DEPLOYMENT, parameters={"stages": [QUICK_STAGE]}, timeout=600, poll_interval=2)
    log = (worker_home / "worker.log").read_text()
    assert flow_run.state is not None and flow_run.state.is_final(), f"still {flow_run.state}:\n{log[-4000:]}"
    return flow_run


def test_the_deployment_is_stored_with_its_weekly_schedule_on_the_process_pool(api_url: str, deployed: str) -> None:
    with prefect_client(api_url) as client:
        deployment = client.read_deployment_by_name(deployed)
        pool = client.read_work_pool(POOL)

    assert pool.type == "process"
    assert deployment.work_pool_name == POOL
    assert deployment.entrypoint == "flows/pipeline.py:nano3_pipeline"
    schedules = [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules]
    assert schedules == [("0 3 * * 0", "UTC", True)]
    assert deployment.parameters == {"config": "tiny", "run": None, "batch": None, "stages": None, "overrides": [],
                                     "max_parallel": None}
    # Where the code is gets decided on the worker's machine when a run starts, not when deploying.
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $NANO3_PROJECT_DIR }}"}}
    ]


def test_the_worker_runs_a_triggered_run_and_publishes_its_lineage(api_url: str, retrain_run: FlowRun,
                                                                    worker_home: Path) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_client(api_url) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[retrain_run.id])))
    by_key = run_artifacts(api_url, retrain_run)

    assert retrain_run.state.is_completed(), (worker_home / "worker.log").read_text()[-4000:]
    assert retrain_run.work_pool_name == POOL and retrain_run.parameters["stages"] == [QUICK_STAGE]
    assert [(t.name, t.state.type.value) for t in task_runs] == [(QUICK_STAGE, "COMPLETED")]
    assert {"data-prep-sft-lineage", "nano3-lineage"} <= set(by_key)
    # The stage's output went to the worker's NANO3_ARTIFACTS_ROOT, the first version of its name.
    store = worker_home / "store"
    stage_lineage = by_key["data-prep-sft-lineage"].data
    assert "## data_prep/sft (ran)" in stage_lineage
    assert "**Output** `nano3-sft-data:v1` (training_jsonl)" in stage_lineage
    assert f"at `{store}/data_prep-sft/" in stage_lineage
    assert (store / "_registry" / "nano3-sft-data" / "v1.json").is_file()
    assert "```mermaid\ngraph LR\n" in by_key["nano3-lineage"].data
    assert '["nano3-sft-data:v1<br/>training_jsonl"]' in by_key["nano3-lineage"].data


def test_serve_registers_its_schedule_and_parameters(api_url: str, tmp_path: Path) -> None:
    env = prefect_env(tmp_path, api_url)
    command = [sys.executable, "-m", "deployments.serve", "--cron", "30 1 * * *", "--timezone", "Europe/Berlin",
               "--stages", "data_prep/sft,sft", "sft:train.train_iters=20"]
    with background(command, env, tmp_path / "serve.log", cwd=PROJECT_ROOT) as process:
        deployment = wait_for_deployment(api_url, "nano3/retrain-serve", process, tmp_path / "serve.log")

    assert deployment.work_pool_name is None  # the serving process runs its runs itself
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [("30 1 * * *", "Europe/Berlin")]
    assert deployment.parameters == {"config": "tiny", "run": None, "batch": None,
                                     "stages": ["data_prep/sft", "sft"], "overrides": ["sft:train.train_iters=20"],
                                     "max_parallel": None}


@pytest.mark.parametrize(("arguments", "error"), [
    (["--stages", "sfft"], "error: command line: --stages: unknown stage 'sfft' (did you mean 'sft'?)"),
    (["--cron", "0 3 * * 8"], 'error: command line: --cron: Invalid cron string: "0 3 * * 8"'),
], ids=["unknown-stage", "bad-cron"])
def test_serve_stops_on_bad_input_before_registering_anything(arguments: list[str], error: str, tmp_path: Path) -> None:
    nowhere = prefect_env(tmp_path, "http://127.0.0.1:9/api")  # nothing may be registered: no server at all
    done = subprocess.run([sys.executable, "-m", "deployments.serve", *arguments], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=nowhere)

    assert (done.returncode, done.stderr.strip()) == (2, error)


def test_prefect_yaml_and_serve_share_the_weekly_schedule() -> None:
    deployment = yaml.safe_load(PREFECT_YAML.read_text())["deployments"][0]
    assert (deployment["schedules"][0]["cron"], deployment["schedules"][0]["timezone"]) == (WEEKLY_CRON, TIMEZONE)


def test_the_ui_shows_the_run_its_stage_and_its_lineage(api_url: str, retrain_run: FlowRun, chromium: WebDriver,
                                                        tmp_path: Path) -> None:
    """What a person sees: the run's page (its deployment, pool and stage), then the stage's lineage."""
    from tests.infra.chromium import click_text, wait_for_text

    ui = api_url.removesuffix("/api")
    chromium.get(f"{ui}/runs/flow-run/{retrain_run.id}")
    wait_for_text(chromium, retrain_run.name, "Completed", "retrain", "nano3-process")
    chromium.save_screenshot(str(tmp_path / "flow-run.png"))
    click_text(chromium, "Task Runs")
    task_runs = wait_for_text(chromium, "1 Task run", QUICK_STAGE)
    click_text(chromium, "Artifacts")
    wait_for_text(chromium, "nano3-lineage", "Lineage of this nano3 run")

    chromium.get(f"{ui}/artifacts/key/data-prep-sft-lineage")
    wait_for_text(chromium, "data_prep/sft: inputs → output", retrain_run.name)
    click_text(chromium, str(run_artifacts(api_url, retrain_run)["data-prep-sft-lineage"].id)[:8])
    rendered = wait_for_text(chromium, "data_prep/sft (ran)", "nano3-sft-data:v1")
    chromium.save_screenshot(str(tmp_path / "lineage.png"))

    assert task_runs.count(QUICK_STAGE) == 1
    # Markdown rendered, not shown as source: the bold and the code marks are gone.
    assert "Output nano3-sft-data:v1 (training_jsonl)" in rendered and "**Output**" not in rendered
    assert (tmp_path / "flow-run.png").stat().st_size > 20_000


def run_artifacts(api_url: str, flow_run: FlowRun) -> dict[str, Artifact]:
    """The Prefect artifacts a run published (its tasks' included), by key."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with prefect_client(api_url) as client:
        of_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        published = client.read_artifacts(artifact_filter=of_run)
    return {artifact.key: artifact for artifact in published if artifact.key}


def wait_for_deployment(api_url: str, name: str, process: subprocess.Popen, log: Path,
                        timeout: float = 180) -> DeploymentResponse:
    """The deployment once the serving process has registered it."""
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with prefect_client(api_url) as client:
        while True:
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)


# --- retraining: new data triggers a run; a rejection and a failure are notified -----------------
# These run last in the module: the first changes the retrain deployment's parameters.

#: What the triggered run does here: the data prep that reads the source, at test size.
QUICK_RETRAIN = {"stages": ["data_prep/pretrain"],
                 "overrides": ["tokenizer.vocab_size=1024", "split.valid_fraction=0.05"]}


def test_the_retrain_deployment_has_an_event_trigger_and_the_watcher_is_deployed(api_url: str, deployed: str) -> None:
    with prefect_client(api_url) as client:
        deployment = client.read_deployment_by_name(deployed)
        watcher = client.read_deployment_by_name("nano3-data-watch/watch-data")
        automations = client.read_automations_by_name("nano3: retrain on new data")
    assert watcher.work_pool_name == POOL and [s.schedule.interval.total_seconds() for s in watcher.schedules] == [600]
    (automation,) = automations
    assert automation.trigger.expect == {"nano3.data.arrived"}
    assert automation.trigger.match.model_dump() == {"prefect.resource.id": "nano3.source.*"}
    assert automation.actions[0].deployment_id == deployment.id


def test_a_dropped_shard_is_announced_by_the_watcher_and_starts_the_retrain_deployment(
    api_url: str, deployed: str, worker: subprocess.Popen, worker_home: Path
) -> None:
    """A shard uploaded into the source folder (no command): the watch-data deployment, run by the
    worker, announces it; the retrain deployment's trigger starts a run that reads it. The
    watcher's next run finds nothing new and starts nothing."""
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId,
    )
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from recipes.nano3.data_prep import corpus
    from tasks.artifacts import ArtifactStore

    store = worker_home / "store"
    with prefect_client(api_url) as client:
        deployment = client.read_deployment_by_name(deployed)
        client.update_deployment(deployment.id, DeploymentUpdate(parameters={**deployment.parameters, **QUICK_RETRAIN}))
        before = {run.id for run in client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))}

    def new_runs(client: SyncPrefectClient) -> list[FlowRun]:
        # (Updating the deployment replaced its scheduled runs: those are the schedule's, not new.)
        return [run for run in client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            if run.id not in before and not run.auto_scheduled]

    # A shard of real text (the first 300 kB of the offline corpus), uploaded as a writer does:
    # under a name the source skips, then renamed.
    texts, size, seen = [], 0, set()
    for text in corpus.python_docstrings():
        if len(text.strip()) >= corpus.MIN_CHARS and text not in seen:
            seen.add(text)
            texts.append(json.dumps({"text": text}) + "\n")
            size += len(text)
        if size > 300_000:
            break
    source = store / "sources" / "pretrain-corpus"
    source.mkdir(parents=True)
    (source / "_news-2026-12.jsonl").write_text("".join(texts))
    (source / "_news-2026-12.jsonl").rename(source / "news-2026-12.jsonl")

    with temporary_settings({PREFECT_API_URL: api_url}):
        watched = run_deployment("nano3-data-watch/watch-data", timeout=300, poll_interval=2)
    assert watched.state is not None and watched.state.is_completed(), (worker_home / "worker.log").read_text()[-4000:]
    deadline = time.monotonic() + 600
    with prefect_client(api_url) as client:
        while not ((runs := new_runs(client)) and runs[0].state is not None and runs[0].state.is_final()):
            assert time.monotonic() < deadline, (worker_home / "worker.log").read_text()[-4000:]
            time.sleep(2)
        (triggered,) = runs
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[triggered.id])))
    assert triggered.state.is_completed(), (worker_home / "worker.log").read_text()[-4000:]
    assert triggered.created_by is not None and triggered.created_by.type == "AUTOMATION"
    assert [(t.name, t.state.type.value) for t in task_runs] == [("data_prep/pretrain", "COMPLETED")]
    made = ArtifactStore(str(store)).resolve("nano3-pretrain-data:latest")
    assert made.metrics["num_documents"] == len(texts)  # the shard's documents, and nothing filled in

    with temporary_settings({PREFECT_API_URL: api_url}):
        again = run_deployment("nano3-data-watch/watch-data", timeout=300, poll_interval=2)
    with prefect_client(api_url) as client:
        of_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[again.id]))
        said = "data_prep/pretrain corpus: up to date (1 shards, as last made)"
        deadline = time.monotonic() + 60  # a run's logs reach the server in batches
        while True:
            logs = [log.message for log in client.read_logs(log_filter=of_run)]
            if any(said in line for line in logs):
                break
            assert time.monotonic() < deadline, logs
            time.sleep(1)
        assert [run.id for run in new_runs(client)] == [triggered.id], "nothing new, nothing started"
    assert again.state is not None and again.state.is_completed()


class Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_rejected_candidate_and_a_failed_run_are_notified(api_url: str, deployed: str, worker: subprocess.Popen,
                                                           tmp_path: Path) -> None:
    from prefect.deployments import run_deployment
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.gate import GateDecision, emit_decision

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = prefect_env(tmp_path, api_url)
        for _ in range(2):  # run again: the automations are replaced, not doubled
            made = subprocess.run([sys.executable, "-m", "deployments.notifications", "--webhook",
                                   f"http://127.0.0.1:{server.server_port}/nano3"], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert made.returncode == 0, made.stderr
        assert made.stdout.splitlines() == ["automation 'nano3: model rejected' created",
                                            "automation 'nano3: run failed' created"]
        with prefect_client(api_url) as client:
            assert [len(client.read_automations_by_name(name)) for name in ("nano3: model rejected", "nano3: run failed")] == [1, 1]
        time.sleep(5)  # the server loads new automations on its next refresh
        with temporary_settings({PREFECT_API_URL: api_url}):
            # The event the gate sends when it keeps the model in service (tasks/gate.py).
            emit_decision(GateDecision(
                verdict="rejected", reason="worse: exact_match 0.1 vs 0.9 in service", metric="exact_match",
                direction="higher", tolerance=0.05, candidate="nano3-model-hf:v7", production="nano3-model-hf:v6",
            ), "nano3-model-hf")
            EventsWorker.drain_all()
            failed = run_deployment(DEPLOYMENT, parameters={"config": "no-such-config"}, timeout=300, poll_interval=2)
        assert failed.state is not None and failed.state.is_failed()
        deadline = time.monotonic() + 120
        while len(Hook.received) < 2 and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        server.shutdown()
    subjects = sorted(message["subject"] for message in Hook.received)
    assert subjects == ["nano3: candidate nano3-model-hf:v7 rejected", f"nano3: flow run {failed.name} failed"], Hook.received
    bodies = {message["subject"]: message["body"] for message in Hook.received}
    assert bodies["nano3: candidate nano3-model-hf:v7 rejected"] == "worse: exact_match 0.1 vs 0.9 in service"
    assert "no config named 'no-such-config'" in bodies[f"nano3: flow run {failed.name} failed"]

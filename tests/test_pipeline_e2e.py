"""The real pipeline, as users run it: `python -m flows.nano3`, sized for CI.

One module-scoped store: the first run does the work; later tests check what a rerun, a changed
override and a crash cost. Every run goes through a fresh process, the local Prefect server of
its HOME, NeMo-Run's LocalExecutor and the real recipes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tasks.artifacts import ArtifactStore
from tasks.lineage import asset_key
from tasks.stages import STAGES
from tests.ci_run import CI_RUN
from tests.prefect_server import prefect_client, prefect_server
from tests.processes import alive as _alive, cmdline as _cmdline, descendants as _descendants
from tests.summary_table import statuses

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

# A whole pipeline on 2 CPU cores: minutes per test, not seconds.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

def environment(home: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(home), PREFECT_HOME=str(home / ".prefect"), PREFECT_API_URL=(home / "api").read_text(),
               NANO3_ARTIFACTS_ROOT=str(home / "store"), WANDB_MODE="offline", NEMORUN_HOME=str(home / "nemo_run"))
    env.pop("NEMOTRON_ENV_FILE", None)
    return env


def nano3(home: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.nano3", *args], cwd=home, env=environment(home),
                          capture_output=True, text=True, timeout=timeout)


def nemotron(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=home, env=environment(home),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The users' folder, and the Prefect server their runs report to (the UI's view of them)."""
    home = tmp_path_factory.mktemp("e2e")
    with prefect_server(home / "prefect-server") as url:
        (home / "api").write_text(url)
        yield home




def records(home: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (home / "store" / "_runs").glob("*.json")}


#: A changed SFT setting that makes the candidate worse on purpose: 20 steps instead of 400
#: (its RL is cut short too: there is nothing for it to improve).
WORSE_SFT = ("sft:train.train_iters=20", "rl:train.train_iters=4")
#: The ladder's margins, about half the smallest gains measured over 3 seeds (bench/ladder.py,
#: docs/pipeline.md): perplexity ÷ 8.4, right sums +0.99, exact match after RL +0.96.
LADDER = {"pretrain_perplexity_ratio": 4.0, "sft_gain": 0.5, "rl_gain": 0.5}


@pytest.fixture(scope="module")
def first_run(home: Path) -> subprocess.CompletedProcess:
    result = nano3(home, *CI_RUN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_the_pipeline_runs_and_sft_beats_the_pretrained_model(home: Path, first_run: subprocess.CompletedProcess) -> None:
    assert statuses(first_run.stdout) == {s.id: "ran" for s in STAGES}
    store = ArtifactStore(str(home / "store"))
    evaluation = store.resolve("nano3-eval:latest")
    model, baseline = evaluation.metrics["exact_match"], evaluation.metrics["baseline_exact_match"]
    assert model >= baseline + 0.2, f"exact match {model} vs pretrained {baseline}"
    # The lineage reaches back to the data: eval consumed the converted model of this run.
    assert {i["name"] for i in evaluation.inputs} == {"nano3-model-hf", "nano3-pretrain-model", "nano3-sft-model",
                                                      "nano3-rl-model", "nano3-sft-data", "nano3-pretrain-data"}
    for name in ("nano3-pretrain-data", "nano3-sft-model", "nano3-model-hf", "nano3-eval"):
        version = store.resolve(f"{name}:latest")
        manifest = store.read_manifest(version.uri)
        assert manifest is not None and manifest.digest == version.digest
        store.verify(name, version.uri, manifest)
    # Every stage's job lines reach the console through Prefect's console handler (stderr), the
    # last one included, and Prefect: test_prefect_shows_… reads the progress artifact.
    for stage in STAGES:
        assert re.search(rf"Task run '{re.escape(stage.id)}' - .*manifest: ", first_run.stderr), stage.id
    # One W&B run per stage, and one that gives the promoted version W&B's `production` alias.
    assert len(list((home / "store" / "_wandb").rglob("run-*.wandb"))) == len(STAGES) + 1
    # No model was in service: the gate promoted the first candidate.
    assert "gate: promoted: no model is in service yet" in first_run.stderr
    assert production(store) == ("v1", store.resolve("nano3-model-hf:v1").digest)


def test_the_ladder_shows_what_every_stage_adds(home: Path, first_run: subprocess.CompletedProcess) -> None:
    """Each checkpoint of the run on the same held-out tasks: pretraining lowers the text's
    perplexity, SFT teaches the task, RL's verifier fixes what the SFT data taught wrong, and the
    replayed text keeps the final model's bits per byte near the pretrained model's. The margins
    are below the smallest gains measured over 3 seeds at this size (docs/pipeline.md)."""
    store = ArtifactStore(str(home / "store"))
    evaluation = store.resolve("nano3-eval:latest")
    assert evaluation.report is not None
    rows = {row["checkpoint"]: row for row in evaluation.report.rows}
    assert list(rows) == ["pretrained", "sft", "rl", "export"]
    pretrained = store.resolve("nano3-pretrain-model:latest").metrics
    assert pretrained["valid_perplexity"] < pretrained["valid_perplexity_start"] / LADDER["pretrain_perplexity_ratio"]
    # SFT teaches the sums (in its data's format); RL's verifier, the format.
    assert rows["sft"]["exact_match_number"] >= rows["pretrained"]["exact_match_number"] + LADDER["sft_gain"], rows
    assert rows["rl"]["exact_match"] >= rows["sft"]["exact_match"] + LADDER["rl_gain"], rows
    assert rows["export"]["exact_match"] >= rows["rl"]["exact_match"] - 0.03, "the bf16 export answers as the RL model"
    assert rows["export"]["bits_per_byte"] <= 1.15 * rows["pretrained"]["bits_per_byte"], rows
    # The summary prints the ladder, with where its charts are.
    assert "eval: Every checkpoint of the run on the same held-out tasks" in first_run.stdout
    assert re.search(r"pretrained .* sft .* rl .* export", " ".join(first_run.stdout.split()), re.S)
    charts = Path(evaluation.uri)
    assert f"charts: {(charts / 'ladder.png').as_uri()}" in " ".join(first_run.stdout.split())
    # Prefect: a table artifact with a row per checkpoint, and markdown that links the charts.
    with prefect_client((home / "api").read_text()) as client:
        artifacts = {a.key: a for a in client.read_latest_artifacts() if a.key}
    table = artifacts["eval-report"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["checkpoint"] for row in table] == list(rows)
    assert (charts / "loss_curves.png").as_uri() in artifacts["eval-charts"].data
    # W&B: the eval's run logged the table and both charts.
    logged = {p.name.split("_")[0] for p in (home / "store" / "_wandb").rglob("files/media/*/eval/*")}
    assert {"report", "ladder", "loss"} <= logged, logged


def test_prefect_shows_the_run_its_artifacts_and_the_asset_graph(home: Path, first_run: subprocess.CompletedProcess) -> None:
    from prefect.events.filters import EventFilter, EventNameFilter

    store = ArtifactStore(str(home / "store"))
    latest = {s.artifact: store.resolve(f"{s.artifact}:latest") for s in STAGES}
    with prefect_client((home / "api").read_text()) as client:
        (run,) = client.read_flow_runs()
        assert run.state is not None and run.state.is_completed()
        artifacts = {a.key: a for a in client.read_latest_artifacts() if a.key}
        deadline = time.monotonic() + 60  # the server persists events in batches, a little later
        while True:
            events = client.read_events(
                EventFilter(event=EventNameFilter(name=["prefect.asset.materialization.succeeded"])), limit=50
            ).events
            if len(events) >= len(STAGES) or time.monotonic() > deadline:
                break
            time.sleep(1)
    graph = artifacts["nano3-lineage"].data
    for version in latest.values():
        assert f"{version.ref}<br/>{version.type}" in graph
    assert f"-->|sft| {version.name}" not in graph  # (a Mermaid node id is name-version)
    assert "nano3-pretrain-model-v1 -->|sft| nano3-sft-model-v1" in graph
    assert latest["nano3-eval"].ref in artifacts["eval-lineage"].data
    assert "exact_match" in str(artifacts["eval-metrics"].data)
    assert artifacts["pretrain-progress"].data == 100.0
    upstream = {e.resource.id: {r.id for r in e.related if r.role == "asset"} for e in events}
    assert upstream[asset_key(latest["nano3-sft-model"].uri)] == {
        asset_key(latest["nano3-pretrain-model"].uri), asset_key(latest["nano3-sft-data"].uri),
        asset_key(latest["nano3-pretrain-data"].uri)}  # the pretraining text SFT replays
    assert len(upstream) == len(STAGES), "one materialized asset per stage"
    # The gate's verdict: an artifact with both sides (no model in service yet) and an event.
    gate = artifacts["nano3-gate"].data
    assert "## Evaluation gate: promoted" in gate and "in service `(none)`" in gate
    (promoted,) = gate_events(home, "nano3.model.promoted", 1)
    assert promoted.payload["candidate"] == latest["nano3-model-hf"].ref and promoted.payload["production"] is None


USER_TASK = """task: user_arithmetic
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/valid.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{messages[0].content}}}}"
doc_to_target: "{{{{messages[1].content}}}}"
generation_kwargs:
  until: ["<end>"]
  do_sample: false
  max_gen_toks: 6
metric_list:
  - metric: exact_match
"""


def test_the_export_loads_where_users_load_models(home: Path, first_run: subprocess.CompletedProcess,
                                                  tmp_path: Path) -> None:
    """lm-eval's own command line and plain transformers on the exported folder, from another
    folder and with nothing of the project importable: the same answers, the eval's level."""
    store = ArtifactStore(str(home / "store"))
    export, data = store.resolve("nano3-model-hf:v1").uri, store.resolve("nano3-sft-data:latest").uri
    (tmp_path / "user_arithmetic.yaml").write_text(USER_TASK.format(data=data))
    offline = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    offline.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HOME=str(tmp_path))
    bin_dir = Path(sys.executable).parent
    lm_eval = subprocess.run(
        [str(bin_dir / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={export},dtype=float32",
         "--tasks", "user_arithmetic", "--include_path", str(tmp_path), "--limit", "20", "--apply_chat_template",
         "--device", "cpu", "--batch_size", "8", "--output_path", str(tmp_path / "results")],
        cwd=tmp_path, env=offline, capture_output=True, text=True, timeout=600)
    assert lm_eval.returncode == 0, lm_eval.stderr[-3000:]
    (results,) = (tmp_path / "results").rglob("results_*.json")
    by_lm_eval = json.loads(results.read_text())["results"]["user_arithmetic"]["exact_match,none"]

    script = Path(__file__).parent / "user_side" / "generate.py"
    generated = subprocess.run([sys.executable, "-I", str(script), export, f"{data}/valid.jsonl"], cwd=tmp_path,
                               env=offline, capture_output=True, text=True, timeout=600)
    assert generated.returncode == 0, generated.stderr[-3000:]
    plain = json.loads(generated.stdout.splitlines()[-1])
    assert plain["project_code"] == []
    assert by_lm_eval >= 0.5 and abs(by_lm_eval - plain["right"] / plain["of"]) <= 0.1, (by_lm_eval, plain)


def production(store: ArtifactStore) -> tuple[str, str] | None:
    """The version the registry's `production` alias names, and its digest."""
    found = store.find("nano3-model-hf:production")
    return (found.version, found.digest) if found else None


def gate_events(home: Path, name: str, count: int) -> list:
    """The `name` events the server holds once it holds `count` (it persists them in batches)."""
    from prefect.events.filters import EventFilter, EventNameFilter

    with prefect_client((home / "api").read_text()) as client:
        deadline = time.monotonic() + 60
        while True:
            events = client.read_events(EventFilter(event=EventNameFilter(name=[name])), limit=50).events
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(1)


def test_a_rerun_does_no_work(home: Path, first_run: subprocess.CompletedProcess) -> None:
    before = records(home)
    started = time.monotonic()
    again = nano3(home, *CI_RUN)
    elapsed = time.monotonic() - started
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(again.stdout) == {s.id: "cached" for s in STAGES}
    assert records(home) == before, "a cached rerun submits nothing"
    # The schedule fired with no new data: nothing to promote, and the run says so.
    assert "gate: in_service: the candidate is the model in service (nano3-model-hf:v1)" in again.stderr
    assert "gate: in_service: " in again.stdout, "the summary says what the gate did"
    assert production(ArtifactStore(str(home / "store")))[0] == "v1"
    print(f"cached rerun: {elapsed:.1f} s")


def test_a_worse_candidate_is_rejected_and_production_stays(home: Path, first_run: subprocess.CompletedProcess) -> None:
    """A changed SFT setting reruns SFT and what follows; 20 steps instead of 400 make the candidate
    worse on purpose: the gate keeps v1 in service and says why, side by side."""
    store = ArtifactStore(str(home / "store"))
    changed = nano3(home, *CI_RUN, *WORSE_SFT)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert statuses(changed.stdout) == {
        "data_prep/pretrain": "cached",
        "data_prep/sft": "cached",
        "data_prep/rl": "cached",
        "pretrain": "cached",
        "sft": "ran",
        "rl": "ran",
        "convert": "ran",
        "eval": "ran",
    }
    evaluation = store.resolve("nano3-eval:latest")
    # The eval measured the model in service on the same data, in the same job.
    assert {"production_exact_match", "production_bits_per_byte"} <= set(evaluation.metrics)
    assert evaluation.metrics["exact_match"] < evaluation.metrics["production_exact_match"] - 0.05
    assert "gate: rejected: worse: exact_match" in changed.stderr and "nano3-model-hf:v1 stays in service" in changed.stderr
    assert "gate: rejected: worse: exact_match" in changed.stdout
    assert production(store)[0] == "v1" and store.latest("nano3-model-hf").version == "v2"
    (rejected,) = gate_events(home, "nano3.model.rejected", 1)
    assert rejected.resource.id == "nano3.model.nano3-model-hf"
    assert (rejected.payload["candidate"], rejected.payload["production"]) == ("nano3-model-hf:v2", "nano3-model-hf:v1")
    with prefect_client((home / "api").read_text()) as client:
        table = next(a for a in client.read_latest_artifacts() if a.key == "nano3-gate").data
    assert "## Evaluation gate: rejected" in table
    assert "| metric | candidate `nano3-model-hf:v2` | in service `nano3-model-hf:v1` |" in table
    assert re.search(r"\| exact_match \(gate\) \| [0-9.]+ \| [0-9.]+ \|", table), table


def test_after_a_rollback_the_gate_compares_with_the_restored_model(
    home: Path, first_run: subprocess.CompletedProcess
) -> None:
    """Promote the rejected v2 by hand, roll it back: the next run compares with v1 again."""
    promote = nemotron(home, "models", "promote", "nano3-model-hf:v2", "-m", "by hand")
    rollback = nemotron(home, "models", "rollback", "nano3-model-hf")
    assert promote.returncode == 0 and rollback.returncode == 0, promote.stderr + rollback.stderr
    assert "v2 -> v1" in rollback.stdout.replace("→", "->"), rollback.stdout
    again = nano3(home, *CI_RUN, *WORSE_SFT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(statuses(again.stdout).values()) == {"cached"}
    assert "gate: rejected" in again.stderr and "nano3-model-hf:v1 stays in service" in again.stderr
    assert production(ArtifactStore(str(home / "store")))[0] == "v1"


def test_killed_during_pretrain_the_rerun_resumes_it(home: Path, first_run: subprocess.CompletedProcess) -> None:
    stages = ("data_prep/pretrain", "pretrain")
    args = ["--stages", ",".join(stages), *[o for o in CI_RUN if o.split(":")[0] in stages],
            "pretrain:train.train_iters=40", "pretrain:train.save_interval=10"]
    log = (home / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.nano3", *args], cwd=home, env=environment(home), stdout=log,
                            stderr=log)
    work = home / "store" / "_work" / "pretrain"
    earlier = set(work.iterdir())
    deadline = time.monotonic() + 600
    while not any(any(p.glob("checkpoints/step_*/COMPLETE")) for p in set(work.iterdir()) - earlier):
        assert proc.poll() is None, (home / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no pretrain checkpoint within 10 minutes"
        time.sleep(1)
    descendants = _descendants(proc.pid)
    assert any("pretrain/train.py" in _cmdline(p) for p in descendants), "the pretrain job runs under the flow"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The job notices its orchestrator is gone and stops by itself.
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
        time.sleep(1)
    assert not any(_alive(p) for p in descendants), "a process of the killed run is still alive"
    (key,) = [p.name for p in set(work.iterdir()) - earlier]
    assert not (home / "store" / "pretrain" / key / "manifest.json").exists()
    saved = max(int(c.parent.name.removeprefix("step_")) for c in (work / key).glob("checkpoints/step_*/COMPLETE"))

    rerun = nano3(home, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert statuses(rerun.stdout) == {"data_prep/pretrain": "cached", "pretrain": "ran"}
    assert f"Task run 'pretrain' - resumed from step {saved}" in rerun.stderr and saved >= 10
    record = json.loads((home / "store" / "_runs" / f"{key}.json").read_text())
    assert record["attempt"] == 2, "one submission before the crash, one after: no duplicate"


def test_a_new_shard_reruns_the_data_prep_it_feeds_and_nothing_else(
    home: Path, first_run: subprocess.CompletedProcess
) -> None:
    store = ArtifactStore(str(home / "store"))
    before = store.resolve("nano3-pretrain-data:latest")
    shard = home / "fresh-news.jsonl"
    shard.write_text("".join(json.dumps({"text": f"Document {n} of the new shard says something new. " * 3}) + "\n"
                             for n in range(50)))
    added = nemotron(home, "data", "add", str(shard))
    assert added.returncode == 0, added.stderr
    assert f"added 1 shard to {home / 'store' / 'sources' / 'pretrain-corpus'}" in added.stdout
    assert "data_prep/pretrain corpus: new data in" in added.stdout and "event nano3.data.arrived sent" in added.stdout
    (arrived,) = gate_events(home, "nano3.data.arrived", 1)
    assert arrived.resource.id == "nano3.source.data_prep-pretrain.corpus" and arrived.payload["shards"] == 2

    stages = ("data_prep/pretrain", "data_prep/sft")
    run = nano3(home, "--stages", ",".join(stages), *[o for o in CI_RUN if o.split(":")[0] in stages])
    assert run.returncode == 0, run.stderr[-3000:]
    assert statuses(run.stdout) == {"data_prep/pretrain": "ran", "data_prep/sft": "cached"}
    after = store.resolve("nano3-pretrain-data:latest")
    assert after.version != before.version
    assert after.metrics["num_documents"] == before.metrics["num_documents"] + 50
    status = nemotron(home, "data", "status")
    assert "up to date" in status.stdout, status.stdout

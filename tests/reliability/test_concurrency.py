"""Concurrency with real processes: publishers racing for one artifact name, two flow runs
publishing the same artifacts, and two identical pipeline runs at once (one computes each stage,
the other waits and reuses it; nothing is submitted twice and nothing is clobbered)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tasks.artifacts import ArtifactStore
from tests.reliability.runs import PROJECT, Sandbox, journal, registry_problems, versions
from tests.reliability.toy_pipeline import TOY_STAGES

PUBLISHERS = 3
PER_PUBLISHER = 40


def test_publishers_racing_for_one_name_get_distinct_versions(isolated: Path) -> None:
    store = ArtifactStore(str(isolated / "store"))
    start_at = time.time() + 8  # every process has imported and prepared its outputs by then
    processes = [
        subprocess.Popen([sys.executable, "-m", "tests.reliability.publish_many", store.root, "raced", f"p{n}",
                          str(PER_PUBLISHER), str(start_at)], cwd=PROJECT, stdout=subprocess.PIPE, text=True)
        for n in range(PUBLISHERS)
    ]
    received = [json.loads(p.communicate(timeout=120)[0]) for p in processes]
    assert all(p.returncode == 0 for p in processes)
    total = PUBLISHERS * PER_PUBLISHER
    everything = sorted(int(v[1:]) for versions_ in received for v in versions_)
    assert everything == list(range(1, total + 1)), "each publish got its own version, none lost or shared"
    for tag, got in zip((f"p{n}" for n in range(PUBLISHERS)), received):
        numbers = [int(v[1:]) for v in got]
        assert numbers == sorted(numbers), "one publisher's versions increase"
        for number, version in enumerate(got):
            record = store.version("raced", version)
            assert record is not None and record.cache_key == f"{tag}-{number:04d}", "no version was clobbered"
    assert registry_problems(store) == []
    latest = store.latest("raced")
    assert latest is not None and latest.version == f"v{total}"


def test_two_flow_runs_publish_the_same_artifacts_at_once(prefect_api: str, isolated: Path) -> None:
    """Different configs, one store: both runs publish toy-numbers, toy-model and toy-total."""
    runs = [Sandbox(isolated / name, prefect_api) for name in ("a", "b")]
    shared = str(isolated / "shared-store")
    configs = [("toy/produce:scale=3", "toy/train:sleep=0.3"), ("toy/produce:scale=5", "toy/train:sleep=0.3")]
    processes = [run.start(*config, results=run.root / "results.json", NANO3_ARTIFACTS_ROOT=shared)
                 for run, config in zip(runs, configs)]
    assert [p.wait(timeout=300) for p in processes] == [0, 0], runs[0].log()[-2000:] + runs[1].log()[-2000:]
    results = [json.loads((run.root / "results.json").read_text()) for run in runs]
    store = ArtifactStore(shared)
    assert versions(store) == {"toy-numbers": 2, "toy-model": 2, "toy-total": 2}
    assert registry_problems(store) == []
    for name in ("toy-numbers", "toy-model", "toy-total"):
        mine = [next(r for r in result if r["artifact"].startswith(f"{name}:")) for result in results]
        assert {m["artifact"] for m in mine} == {f"{name}:v1", f"{name}:v2"}, "each run published its own version"
        for entry in mine:
            assert store.resolve(entry["artifact"]).digest == entry["digest"], "no run's version holds the other's output"
    totals = {store.resolve(next(r["artifact"] for r in result if r["stage"] == "toy/consume")).metrics["total"]
              for result in results}
    assert totals == {3 * (0 + 1 + 2), 5 * (0 + 1 + 2)}


def test_two_identical_pipeline_runs_at_once_compute_each_stage_once(prefect_api: str, isolated: Path) -> None:
    runs = [Sandbox(isolated / name, prefect_api) for name in ("a", "b")]
    shared = str(isolated / "shared-store")
    config = ("toy/produce:sleep=0.5", "toy/train:sleep=0.5")
    processes = [run.start(*config, results=run.root / "results.json", NANO3_ARTIFACTS_ROOT=shared) for run in runs]
    assert [p.wait(timeout=300) for p in processes] == [0, 0], runs[0].log()[-2000:] + runs[1].log()[-2000:]
    results = [json.loads((run.root / "results.json").read_text()) for run in runs]
    store = ArtifactStore(shared)
    jobs = journal(store)
    assert {stage: len(entries) for stage, entries in jobs.items()} == {s.id: 1 for s in TOY_STAGES}, \
        "one job per stage across both runs"
    for stage in TOY_STAGES:
        statuses = sorted(next(r["status"] for r in result if r["stage"] == stage.id) for result in results)
        assert statuses == ["cached", "ran"], f"{stage.id}: one run computes it, the other reuses it"
    assert results[0] == [dict(r, status=a["status"]) for r, a in zip(results[1], results[0])], \
        "both runs end with the same versions and digests"
    assert versions(store) == {"toy-numbers": 1, "toy-model": 1, "toy-total": 1}
    assert registry_problems(store) == []
    logs = runs[0].log() + runs[1].log()
    assert "is computing cache key" in logs and "waiting for it" in logs, "the second run waited for the first"

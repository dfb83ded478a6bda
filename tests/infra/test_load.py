"""Pipeline runs at once against a PostgreSQL-backed Prefect server, their jobs on the local Slurm:
all complete, nothing is submitted twice, every artifact verifies, identical runs share their jobs.

The suite runs 12 at once (4 distinct configs, 4 identical pairs); bench/load.py runs the full 20
(10 + 5 pairs) and records the latencies and wall times in docs/performance.md."""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.load_runs import Load, configs, run_load
from tests.prefect_server import PrefectServer
from tests.reliability.runs import journal, registry_problems, versions
from tests.reliability.toy_pipeline import TOY_STAGES

DISTINCT, PAIRS = 4, 4
RUNS = DISTINCT + 2 * PAIRS


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prefect = PrefectServer(tmp_path_factory.mktemp("prefect-load"), database_url=postgres_url)
    try:
        yield prefect.start()
    finally:
        prefect.stop()


@pytest.fixture(scope="module")
def load(server: str, slurm_cluster, tmp_path_factory: pytest.TempPathFactory) -> Load:  # noqa: ANN001
    # Slurm's jobs run this environment's python (sbatch passes the submitter's PATH on).
    slurm = {**slurm_cluster.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
             "WANDB_MODE": "disabled"}
    return run_load(tmp_path_factory.mktemp("load"), server, slurm, distinct=DISTINCT, pairs=PAIRS)


@pytest.mark.timeout(1800)
def test_runs_at_once_all_complete_and_each_job_is_submitted_once(load: Load) -> None:
    failed = [run.name for run in load.runs if run.process is None or run.process.returncode != 0]
    assert not failed, "\n".join(f"{name}: {next(r for r in load.runs if r.name == name).sandbox.log()[-2000:]}"
                                 for name in failed)
    assert len(load.runs) == RUNS and all(len(run.results) == len(TOY_STAGES) for run in load.runs)
    # One job per stage and config, across all the runs: DISTINCT + PAIRS configs.
    jobs = journal(load.store)
    assert {stage: len(starts) for stage, starts in jobs.items()} == {s.id: DISTINCT + PAIRS for s in TOY_STAGES}
    assert all(not start["overlaps"] for starts in jobs.values() for start in starts), "two jobs ran one stage at once"
    assert versions(load.store) == {stage.artifact: DISTINCT + PAIRS for stage in TOY_STAGES}
    assert registry_problems(load.store) == [], "every published version's files verify against its digest"


@pytest.mark.timeout(1800)
def test_identical_runs_share_each_submission(load: Load) -> None:
    by_name = {run.name: run for run in load.runs}
    for n in range(PAIRS):
        a, b = by_name[f"p{n}a"].results, by_name[f"p{n}b"].results
        assert [(r["stage"], r["artifact"], r["digest"]) for r in a] == [(r["stage"], r["artifact"], r["digest"]) for r in b]
        for stage in TOY_STAGES:
            statuses = sorted(next(r["status"] for r in results if r["stage"] == stage.id) for results in (a, b))
            assert statuses == ["cached", "ran"], f"p{n} {stage.id}: one computes it, the other reuses it"
    distinct = {r["digest"] for name, _ in configs(DISTINCT, 0) for r in by_name[name].results}
    assert len(distinct) == DISTINCT * len(TOY_STAGES), "distinct configs make distinct artifacts"


@pytest.mark.timeout(1800)
def test_the_server_answered_throughout(load: Load) -> None:
    assert load.failures == 0 and len(load.latencies) > 10
    walls = sorted(run.wall for run in load.runs if run.wall is not None)
    print(f"\nAPI latency under {RUNS} runs: median {statistics.median(load.latencies):.3f} s, "
          f"max {max(load.latencies):.3f} s over {len(load.latencies)} calls; run wall times "
          f"{walls[0]:.0f} / {statistics.median(walls):.0f} / {walls[-1]:.0f} s (min / median / max)")

"""The pipeline as a graph: what each stage waits for, how many run at once, and real runs of
independent stages at the same time and of a failing branch beside one that finishes."""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from blocks.errors import ConfigError
from blocks.prefect_server import stop_local_servers
from flows.run_options import RunOptions, check_inputs, resolve_run
from flows.stage_graph import dependencies, parallelism
from tasks.artifacts import ArtifactStore
from tasks.refs import follows_run
from tasks.stages import STAGES, STAGES_BY_ID
from tests.conftest import run_cli, write_env

DATA_PREPS = "data_prep/pretrain,data_prep/sft,data_prep/rl"


def jobs_for(profile: str | None = None, stages: str | None = None):  # noqa: ANN201 - list[JobConfig]
    selected = [STAGES_BY_ID[s] for s in stages.split(",")] if stages else list(STAGES)
    return list(resolve_run(RunOptions(config="tiny", run=profile), selected).jobs)


def test_each_stage_waits_for_the_stages_it_reads_latest_from(isolated: Path) -> None:
    assert dependencies(jobs_for()) == {
        "data_prep/pretrain": (),
        "data_prep/sft": (),
        "data_prep/rl": (),
        "pretrain": ("data_prep/pretrain",),
        "sft": ("data_prep/sft", "pretrain", "data_prep/pretrain"),
        "rl": ("data_prep/rl", "sft"),
        "convert": ("rl",),
        "eval": ("convert", "pretrain", "data_prep/sft", "data_prep/pretrain", "sft", "rl"),
    }


@pytest.mark.parametrize(("ref", "waits"), [
    ("nano3-pretrain-model:v3", False), ("nano3-pretrain-model:production", False),
    ("nano3-pretrain-model", True), ("art://nano3-pretrain-model:latest", True),
])
def test_only_a_reference_to_the_latest_version_waits(isolated: Path, ref: str, waits: bool) -> None:
    """A pinned version or an alias is read from the store; `name` is `name:latest` (the store reads
    it so), so it waits for the stage that makes it, as resolve_inputs takes that stage's version."""
    jobs = list(resolve_run(RunOptions(config="tiny", overrides=(f"sft:run.model={ref}",)),
                            [STAGES_BY_ID["pretrain"], STAGES_BY_ID["sft"]]).jobs)
    assert ("pretrain" in dependencies(jobs)["sft"]) == waits
    assert follows_run(ref) == waits


def test_a_pinned_input_is_checked_in_the_store_even_when_the_run_makes_that_artifact(isolated: Path) -> None:
    stages = [STAGES_BY_ID[s] for s in ("data_prep/pretrain", "data_prep/sft", "pretrain", "sft")]
    jobs = resolve_run(RunOptions(config="tiny", overrides=("sft:run.model=nano3-pretrain-model:v3",)), stages).jobs
    with pytest.raises(ConfigError, match=r"stage sft needs nano3-pretrain-model:v3") as error:
        check_inputs(jobs, ArtifactStore(str(isolated / "store")))
    assert error.value.key == "run.model"


@pytest.mark.parametrize(("cores", "limit"), [(2, 1), (8, 1), (16, 2), (64, 8)])
def test_jobs_on_this_machine_get_their_share_of_its_cores(isolated: Path, monkeypatch: pytest.MonkeyPatch,
                                                           cores: int, limit: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    here = parallelism(jobs_for(), None)
    assert (here.limit, here.reason) == (limit, f"jobs on this machine: {cores} cores, 8 per job; --max-parallel to change")


def test_how_many_at_once(isolated: Path) -> None:
    write_env(isolated, '[cluster]\nexecutor = "slurm"\naccount = "a"\npartition = "p"\n'
                        '[box]\nexecutor = "docker"\ncontainer_image = "nano3:1"\n')
    assert parallelism(jobs_for("cluster"), None).limit == len(STAGES)
    assert parallelism(jobs_for("box"), None).reason.startswith("jobs on this machine")
    assert parallelism(jobs_for(), 3).limit == 3
    with pytest.raises(ConfigError, match="--max-parallel must be at least 1"):
        parallelism(jobs_for(), 0)


def test_the_dry_run_shows_the_order(isolated: Path) -> None:
    result = run_cli(["-d", "--max-parallel", "2"], isolated)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("order: at most 2 stages at once (--max-parallel)")
    assert lines[start + 1].split() == ["data_prep/pretrain", "starts", "at", "once"]
    assert lines[start + 4].split() == ["pretrain", "after", "data_prep/pretrain"]
    assert lines[start + 6].split() == ["rl", "after", "data_prep/rl,", "sft"]


def task_runs(url: str) -> dict[str, tuple[datetime, datetime]]:
    request = urllib.request.Request(f"{url}/api/task_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        runs = json.load(response)
    return {run["name"]: (datetime.fromisoformat(run["start_time"]), datetime.fromisoformat(run["end_time"]))
            for run in runs if run["start_time"] and run["end_time"]}


@pytest.mark.timeout(900)
def test_independent_stages_run_at_the_same_time(isolated: Path) -> None:
    env = {"NANO3_LOCAL_SERVER_IDLE_MINUTES": "1"}  # the Prefect server stays to be asked
    try:
        result = run_cli(["--stages", DATA_PREPS, "--max-parallel", "3"], isolated, env=env)
        assert result.code == 0, result.stderr[-3000:]
        url = result.stderr.split("UI at ", 1)[1].split()[0]
        runs = task_runs(url)
    finally:
        stop_local_servers(isolated.parent / "home" / ".prefect")
    assert sorted(runs) == sorted(DATA_PREPS.split(","))
    # All three ran at once: the last to start started before the first to end ended.
    assert max(start for start, _ in runs.values()) < min(end for _, end in runs.values())
    for stage in DATA_PREPS.split(","):
        assert "ran" in next(line for line in result.stdout.splitlines() if f"│ {stage} " in line)


@pytest.mark.timeout(900)
def test_a_failed_stage_skips_what_needs_it_and_not_the_rest(isolated: Path) -> None:
    result = run_cli(["--stages", "data_prep/pretrain,data_prep/rl,pretrain", "--max-parallel", "2",
                      "data_prep/pretrain:split.valid_fraction=0"], isolated)
    assert result.code == 1
    assert "pretrain: not run: it needs data_prep/pretrain, which did not finish" in result.stderr
    assert "not finished: data_prep/pretrain, pretrain; finished: data_prep/rl" in result.stderr
    assert any(line.startswith("error: data_prep/pretrain: job ") for line in result.stderr.splitlines())
    registry = isolated / ".nano3" / "artifacts" / "_registry"
    assert (registry / "nano3-rl-data" / "latest.json").is_file()
    assert not (registry / "nano3-pretrain-data").exists() and not (registry / "nano3-pretrain-model").exists()

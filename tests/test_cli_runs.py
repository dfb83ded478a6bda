"""Detached submission and `nemotron runs …`, against a stand-in Slurm on this machine.

sbatch, sacct, scancel and squeue are small scripts on PATH that keep their jobs in a folder:
NeMo-Run's Slurm scheduler runs them through its local tunnel exactly as it would run the real
ones, so submission, status, logs and cancel go through NeMo-Run end to end.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_env

SBATCH = r'''#!/usr/bin/env python3
import os, pathlib, re, sys
state = pathlib.Path(os.environ["FAKE_SLURM_DIR"])
script = pathlib.Path(sys.argv[-1]).read_text()
job_id = str(4242 + len(list(state.glob("*.job"))))
(state / f"{job_id}.job").write_text(re.search(r"#SBATCH --job-name=(\S+)", script).group(1))
(state / f"{job_id}.state").write_text("RUNNING")
log = re.search(r"srun --output (\S+)", script).group(1).replace("%j", job_id).replace("${SLURM_RESTART_COUNT:-0}", "0")
pathlib.Path(log).parent.mkdir(parents=True, exist_ok=True)
pathlib.Path(log).write_text('reading prompts\nNANO3_PROGRESS {"step": 3, "total": 10, "loss": 1.25}\nhalfway there\n')
with (state / "calls").open("a") as calls:
    calls.write("sbatch " + " ".join(sys.argv[1:]) + "\n")
print(job_id)
'''
SACCT = r'''#!/usr/bin/env python3
import os, pathlib, sys
state = pathlib.Path(os.environ["FAKE_SLURM_DIR"])
job_id = sys.argv[sys.argv.index("-j") + 1]
print("JobID|JobName|State")
if (state / f"{job_id}.job").exists():
    print(f"{job_id}|{(state / f'{job_id}.job').read_text()}|{(state / f'{job_id}.state').read_text()}")
'''
SCANCEL = r'''#!/usr/bin/env python3
import os, pathlib, sys
state = pathlib.Path(os.environ["FAKE_SLURM_DIR"])
(state / f"{sys.argv[-1]}.state").write_text("CANCELLED")
with (state / "calls").open("a") as calls:
    calls.write("scancel " + sys.argv[-1] + "\n")
'''
SQUEUE = "#!/bin/sh\nexit 0\n"

PROFILE = '[fake]\nexecutor = "slurm"\naccount = "acct"\npartition = "batch"\npackager = "none"\n'


@pytest.fixture
def slurm(tmp_path: Path) -> dict[str, str]:
    """PATH and state folder of the stand-in Slurm."""
    bin_dir, state = tmp_path / "fake-slurm-bin", tmp_path / "fake-slurm-state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("sbatch", SBATCH), ("sacct", SACCT), ("scancel", SCANCEL), ("squeue", SQUEUE)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}


def nemotron(args: list[str], cwd: Path, env: dict[str, str]):  # noqa: ANN201 - conftest.Result
    return run_cli(args, cwd, env=env, module="flows.cli")


def calls(slurm: dict[str, str]) -> list[str]:
    path = Path(slurm["FAKE_SLURM_DIR"]) / "calls"
    return path.read_text().splitlines() if path.exists() else []


def row(stdout: str, stage: str) -> str:
    """The line of a rich table whose first cell is `stage`."""
    return next(line for line in stdout.splitlines() if line.startswith(f"│ {stage} "))


def records(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((work / ".nano3" / "artifacts" / "_runs").glob("*.json"))]


@pytest.mark.timeout(900)
def test_detached_submission_then_follow_it_with_runs(isolated: Path, slurm: dict[str, str]) -> None:
    write_env(isolated, PROFILE)
    submitted = nemotron(["nano3", "pipe", "-b", "fake", "--stages", "data_prep/pretrain,pretrain"], isolated, slurm)
    assert submitted.code == 0, submitted.stderr[-3000:]
    # data prep is submitted; pretrain waits for its output instead of being submitted blind.
    assert [c.split()[0] for c in calls(slurm)] == ["sbatch"]
    [record] = records(isolated)
    assert record["stage"] == "data_prep/pretrain" and record["job_id"] == "4242" and record["executor"] == "slurm"
    experiment = record["experiment_id"]
    assert "submitted" in row(submitted.stdout, "data_prep/pretrain") and "4242" in row(submitted.stdout, "data_prep/pretrain")
    assert "waiting" in row(submitted.stdout, "pretrain")
    assert "needs nano3-pretrain-data from data_prep/pretrain" in row(submitted.stdout, "pretrain")
    assert f"nemotron runs logs {experiment} --follow" in submitted.stdout
    assert "for flow 'nano3-submit'" in submitted.stderr

    # Again while it runs: reported as running, nothing submitted twice.
    again = nemotron(["nano3", "data", "prep", "pretrain", "-b", "fake"], isolated, slurm)
    assert again.code == 0, again.stderr[-3000:]
    assert "running" in row(again.stdout, "data_prep/pretrain")
    assert [c.split()[0] for c in calls(slurm)] == ["sbatch"]

    listed = nemotron(["runs", "list"], isolated, slurm)
    assert listed.code == 0, listed.stderr
    listed_row = row(listed.stdout, experiment)
    assert "data_prep/pretrain" in listed_row and "slurm" in listed_row and "4242" in listed_row
    # The Prefect flow runs that submitted it, newest first, beside the submissions.
    flow_rows = [line for line in listed.stdout.splitlines() if "│ nano3-" in line and "-submit" in line]
    assert [("nano3-data_prep-pretrain-submit" in r, "nano3-submit " in r) for r in flow_rows] == [(True, False), (False, True)]
    assert all("Completed" in r for r in flow_rows)
    flow_run = flow_rows[-1].split("│")[1].strip()
    flow_logs = nemotron(["runs", "logs", flow_run], isolated, slurm)
    assert flow_logs.code == 0, flow_logs.stderr
    assert "data_prep/pretrain: cache key" in flow_logs.stdout and "submitting detached through slurm" in flow_logs.stdout

    status = nemotron(["runs", "status", experiment], isolated, slurm)
    assert status.code == 0, status.stderr
    assert "state:     RUNNING" in status.stdout and "job:       4242" in status.stdout
    by_job_id = nemotron(["runs", "status", "4242"], isolated, slurm)
    assert f"run:       {experiment}" in by_job_id.stdout
    by_key = nemotron(["runs", "status", record["cache_key"][:8]], isolated, slurm)
    assert f"run:       {experiment}" in by_key.stdout

    logs = nemotron(["runs", "logs", experiment], isolated, slurm)
    assert logs.code == 0, logs.stderr
    assert logs.stdout.splitlines() == ["reading prompts", "[data_prep/pretrain] step 3/10 loss=1.25", "halfway there"]
    assert f"{experiment}: RUNNING" in logs.stderr

    cancelled = nemotron(["runs", "cancel", experiment], isolated, slurm)
    assert cancelled.code == 0, cancelled.stderr
    assert "cancelled data_prep/pretrain job 4242 (now CANCELLED)" in cancelled.stdout
    assert calls(slurm)[-1] == "scancel 4242"
    twice = nemotron(["runs", "cancel", experiment], isolated, slurm)
    assert "already CANCELLED; nothing to cancel" in twice.stdout
    assert calls(slurm)[-1] == "scancel 4242" and len(calls(slurm)) == 2

    # A cancelled job is no longer running: the next call submits it again (attempt 2).
    resubmitted = nemotron(["nano3", "data", "prep", "pretrain", "-b", "fake"], isolated, slurm)
    assert resubmitted.code == 0, resubmitted.stderr[-3000:]
    assert [c.split()[0] for c in calls(slurm)] == ["sbatch", "scancel", "sbatch"]
    [record] = records(isolated)
    assert record["attempt"] == 2 and record["job_id"] == "4243"


@pytest.mark.parametrize("command", ["status", "logs", "cancel"])
def test_an_unknown_run_is_one_error(isolated: Path, command: str) -> None:
    result = run_cli(["runs", command, "nano3-nothing_1"], isolated, module="flows.cli")
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no submission 'nano3-nothing_1'" in errors[0] and "nemotron runs list" in errors[0]


def test_runs_list_without_submissions(isolated: Path) -> None:
    result = run_cli(["runs", "list", "--no-flows"], isolated, module="flows.cli")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == "no submissions yet"


def test_a_local_run_has_nothing_to_cancel(isolated: Path) -> None:
    runs = isolated / ".nano3" / "artifacts" / "_runs"
    runs.mkdir(parents=True)
    (runs / "abcdef0123456789.json").write_text(json.dumps({
        "cache_key": "abcdef0123456789", "stage": "data_prep/rl", "executor": "local",
        "experiment_id": "nano3-data_prep-rl_17", "job_id": None, "submitted": "2025-01-01T00:00:00+00:00",
    }))
    cancel = run_cli(["runs", "cancel", "abcdef01"], isolated, module="flows.cli")
    assert cancel.code == 2 and "ran on this machine: it ended with the command that started it" in cancel.stderr
    status = run_cli(["runs", "status", "nano3-data_prep-rl_17"], isolated, module="flows.cli")
    assert status.code == 0, status.stderr
    assert "state:     ENDED" in status.stdout and "output:    not written yet" in status.stdout


@pytest.mark.timeout(900)
def test_a_finished_stage_is_published_not_submitted_again(isolated: Path, slurm: dict[str, str]) -> None:
    """Where a stage runs is not part of its cache key: output made here counts for --batch too."""
    write_env(isolated, PROFILE)
    here = nemotron(["nano3", "data", "prep", "rl", "prompts=200", "held_out=20"], isolated, slurm)
    assert here.code == 0, here.stderr[-3000:]
    detached = nemotron(["nano3", "data", "prep", "rl", "-b", "fake", "prompts=200", "held_out=20"], isolated, slurm)
    assert detached.code == 0, detached.stderr[-3000:]
    assert "done" in row(detached.stdout, "data_prep/rl") and "nano3-rl-data:v1" in row(detached.stdout, "data_prep/rl")
    assert calls(slurm) == [], "nothing was submitted"
    assert "run this command again" not in detached.stdout

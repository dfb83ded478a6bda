"""Without PREFECT_API_URL, commands share one local Prefect server that stops when unused.

Real processes and a real `prefect server start`, each test with its own PREFECT_HOME.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from blocks.prefect_server import stop_local_servers
from tests.conftest import PROJECT, run_cli

#: A command of its own: the local server for it, a flow run recorded there, then `hold` seconds
#: more with the server in use (past the idle time in one test), and a second flow run.
COMMAND = """
import json, sys, time
from blocks.prefect_server import use_local_server
from prefect import flow

server = use_local_server()

@flow(name="probe")
def probe() -> int:
    return 1

probe()
time.sleep(float(sys.argv[1]))
probe()
print(json.dumps(None if server is None else {"url": server.url, "started": server.started}))
"""


def env_for(home: Path, idle_minutes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home / ".prefect"), HOME=str(home), PYTHONPATH=str(PROJECT),
               NANO3_LOCAL_SERVER_IDLE_MINUTES=idle_minutes, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def command(env: dict[str, str], cwd: Path, hold: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", COMMAND, str(hold)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(proc: subprocess.Popen[str]) -> dict | None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def state_files(home: Path) -> list[Path]:
    return sorted((home / ".prefect").glob("nano3-server-*.json"))


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def flow_run_names(url: str) -> list[str]:
    request = urllib.request.Request(f"{url}/api/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return [run["name"] for run in json.load(response)]


def wait_until_stopped(home: Path, url: str, seconds: float = 120) -> None:
    log = next((home / ".prefect").glob("nano3-server-*.log"))
    deadline = time.monotonic() + seconds
    while (state_files(home) or f"stopped {url}" not in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not state_files(home), "the local server did not stop once unused"
    assert f"stopped {url}" in log.read_text()
    assert not answers(url)


@pytest.mark.timeout(600)
def test_a_command_keeps_its_server_past_the_idle_time_and_the_next_one_reuses_it(tmp_path: Path) -> None:
    env = env_for(tmp_path / "home", "0.05")  # 3 s without a command
    first = finished(command(env, tmp_path, hold=8))
    assert first is not None and first["started"] is True
    # The first command held its server 8 s past the idle time, and both of its flow runs were
    # recorded; the second command, right after, finds the same server.
    second = finished(command(env, tmp_path))
    assert second == {"url": first["url"], "started": False}
    assert len(flow_run_names(first["url"])) == 4
    wait_until_stopped(tmp_path / "home", first["url"])


@pytest.mark.timeout(600)
def test_commands_started_at_once_start_one_server(tmp_path: Path) -> None:
    env = env_for(tmp_path / "home", "0.05")
    results = [finished(proc) for proc in [command(env, tmp_path) for _ in range(3)]]
    assert all(result is not None for result in results)
    assert len({result["url"] for result in results}) == 1
    assert sorted(result["started"] for result in results) == [False, False, True]
    assert len(flow_run_names(results[0]["url"])) == 6
    wait_until_stopped(tmp_path / "home", results[0]["url"])


@pytest.mark.parametrize("setting", [{"NANO3_LOCAL_SERVER_IDLE_MINUTES": "0"}, {"PREFECT_API_URL": "http://127.0.0.1:9/api"}],
                         ids=["turned-off", "server-configured"])
def test_no_local_server_when_turned_off_or_a_server_is_configured(tmp_path: Path, setting: dict[str, str]) -> None:
    env = {**env_for(tmp_path / "home", "15"), **setting}
    code = "from blocks.prefect_server import use_local_server; print(use_local_server())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
    assert not state_files(tmp_path / "home")


@pytest.mark.timeout(900)
def test_a_rerun_of_a_stage_uses_the_server_the_first_run_started(isolated: Path) -> None:
    """The command line says which server it uses and where its UI is; `runs list` reads it too."""
    env = {"NANO3_LOCAL_SERVER_IDLE_MINUTES": "0.2"}
    args = ["nano3", "data", "prep", "rl", "prompts=50", "held_out=10"]
    first = run_cli(args, isolated, env=env, module="flows.cli")
    assert first.code == 0, first.stderr[-3000:]
    assert "Prefect: started this machine's local server, UI at http://127.0.0.1:" in first.stderr
    url = first.stderr.split("UI at ", 1)[1].split()[0]
    again = run_cli(args, isolated, env=env, module="flows.cli")
    assert again.code == 0, again.stderr[-3000:]
    assert f"Prefect: using this machine's local server, UI at {url} " in again.stderr
    assert "cached" in next(line for line in again.stdout.splitlines() if "data_prep/rl" in line)
    listed = run_cli(["runs", "list"], isolated, env=env, module="flows.cli")
    assert listed.code == 0, listed.stderr[-3000:]
    assert listed.stdout.count("nano3-data_prep-rl") >= 2
    # Stopped on request (the idle stop is the tests above): the next command would start another.
    assert stop_local_servers(isolated.parent / "home" / ".prefect") == [url]
    assert not state_files(isolated.parent / "home")
    deadline = time.monotonic() + 30  # the web server's own process ends a moment after the group's first
    while answers(url) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not answers(url)

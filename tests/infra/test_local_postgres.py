"""A Prefect server runs on the local PostgreSQL, and flow runs reported to it land there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import local_postgres
from local_postgres import PostgresServer

from tests.prefect_server import prefect_server

FLOW = '''
from prefect import flow, task

@task
def add(a: int, b: int) -> int:
    return a + b

@flow(name="infra-postgres-check")
def check() -> int:
    return add(20, 22)

assert check() == 42
'''


def test_a_prefect_server_on_postgres_records_a_flow_run(postgres_server: PostgresServer, postgres_url: str,
                                                          tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server_home = tmp_path / "server"
    with prefect_server(server_home, database_url=postgres_url) as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(tmp_path / "client"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        ran = subprocess.run([sys.executable, "-c", FLOW], env=env, capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr[-2000:]
        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["infra-postgres-check"])))
            # The database is the session's: other tests' runs may be in it too.
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))

    assert [run.state.type.value for run in runs] == ["COMPLETED"]
    assert [run.name.split("-")[0] for run in task_runs] == ["add"]
    assert not (server_home / "prefect.db").exists()  # no SQLite fallback: the rows are in PostgreSQL
    assert _sql(postgres_server, f"SELECT count(*) FROM flow_run WHERE id = '{runs[0].id}'") == "1"


def test_the_command_line_prints_the_url_and_starting_twice_is_harmless() -> None:
    folder = Path(tempfile.mkdtemp(prefix="nano3-postgres-cli-"))
    script = local_postgres.__file__

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, *args, "--dir", str(folder)],
                              capture_output=True, text=True, timeout=120)

    try:
        first, second, status = run("start"), run("start"), run("status")
    finally:
        stopped = run("stop")
        shutil.rmtree(folder, ignore_errors=True)

    url_lines = [line for line in first.stdout.splitlines() if line.startswith("export ")]
    assert first.returncode == 0, first.stderr
    assert len(url_lines) == 1 and url_lines[0].startswith(
        "export PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://postgres@127.0.0.1:")
    assert url_lines[0].endswith("/prefect")
    assert second.stdout.splitlines() == [f"already running in {folder.resolve()}", url_lines[0]]
    assert (status.returncode, stopped.stdout.strip()) == (0, "stopped")


def _sql(server: PostgresServer, query: str) -> str:
    psql = local_postgres.require_command("psql", local_postgres.INSTALL_HINT,
                                          extra_dirs=[Path(d) for d in local_postgres.SERVER_BIN_DIRS])
    done = subprocess.run([psql, "-h", server.dir, "-p", str(server.port), "-U", "postgres", "-d", server.database,
                           "-tAc", query], capture_output=True, text=True, check=True)
    return done.stdout.strip()

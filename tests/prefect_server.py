"""A real `prefect server start` for tests whose runs happen in other processes.

Runs launched as subprocesses report to it through PREFECT_API_URL, and the test reads their flow
runs, artifacts, logs and events back through the Prefect client afterwards, as the UI does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group, SIGKILL after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def background(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """A long-running command in its own process group, stopped by that group's id."""
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield process
        finally:
            stop_group(process)


@contextmanager
def prefect_client(api_url: str) -> Iterator[SyncPrefectClient]:
    """The Prefect client of that server, as the UI reads it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


class PrefectServer:
    """`prefect server start` with its own PREFECT_HOME on a fixed port, which can be stopped and
    started again there (same port, same database): the outage a run has to live through."""

    def __init__(self, home: Path, *, database_url: str | None = None, port: int | None = None,
                 timeout: float = 180) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        self.env.pop("PREFECT_API_URL", None)
        # `--port` does not reach the UI's idea of where the API is (it keeps 4200).
        self.env["PREFECT_UI_API_URL"] = self.url
        if database_url:
            self.env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    def start(self) -> str:
        """Start it (in its own process group) and wait until /health answers; its API URL."""
        self.home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("a") as output:
            self.process = subprocess.Popen(command, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Prefect server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)
        return self.url

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to its process group (SIGKILL after 30 s); returns once the port is free."""
        process, self.process = self.process, None
        if process is None:
            return
        stop_group(process)
        # Children of the group (uvicorn's) may hold the port a moment longer.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not port_is_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)

    def restart(self, down_seconds: float = 0) -> str:
        """Stop it, stay down `down_seconds`, start it again on the same port and database."""
        self.stop()
        time.sleep(down_seconds)
        return self.start()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def prefect_server(home: Path, *, database_url: str | None = None, timeout: float = 180) -> Iterator[str]:
    """Start a server with its own PREFECT_HOME; yield its API URL; stop it (its own process group)."""
    server = PrefectServer(home, database_url=database_url, timeout=timeout)
    try:
        yield server.start()
    finally:
        server.stop()

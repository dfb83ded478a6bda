"""Which Prefect API a command talks to when none is configured: this machine's local server.

Without PREFECT_API_URL, Prefect starts a temporary server for each command and stops it when
the command exits: 8-10 s of every run on 2 cores (its package imported in the command's
process, then again in the server's), and its UI is gone with it. Instead, the first command
that needs Prefect starts `prefect server start` (the same SQLite database under PREFECT_HOME,
its UI on) behind a small supervisor, and later commands use it:

- The supervisor (`python -m blocks.prefect_server`, started in its own session, so a terminal's
  Ctrl-C does not reach it) stops the server after `NANO3_LOCAL_SERVER_IDLE_MINUTES` (default
  15) with no command using it; 0 turns all this off (Prefect's temporary server per command).
- A command uses the server from its first Prefect call to its exit, holding a shared lock on a
  file under PREFECT_HOME; the supervisor stops the server only while it can hold that lock
  exclusively, so no command loses its server half-way, and a command that arrives while it
  stops waits for the stop to finish and starts a new one.
- One command at a time starts a server (a second lock); its address is in a state file named
  after the database and Prefect's version, so a changed database or an upgraded Prefect gets
  a server of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from blocks.errors import ConfigError

#: How often the supervisor looks for commands using its server.
CHECK_SECONDS = 1.0
#: How long the supervisor waits for the server to stop before it kills it.
STOP_SECONDS = 10.0


@dataclass(frozen=True)
class ServerFiles:
    """The files of one local server under PREFECT_HOME, named after what it serves (`key`): its
    state (URL, pids; present while it answers), the lock of the commands using it, the lock of
    the command starting it, and the supervisor's log."""

    home: Path
    key: str
    state: Path
    users: Path
    starting: Path
    log: Path

    @classmethod
    def of(cls, home: Path, key: str) -> ServerFiles:
        stem = home / f"nano3-server-{key}"
        return cls(home, key, *(stem.with_suffix(suffix) for suffix in (".json", ".users", ".start", ".log")))


@dataclass(frozen=True)
class LocalServer:
    url: str
    started: bool
    idle_minutes: float
    log: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def describe(self) -> str:
        how = "started" if self.started else "using"
        return (f"Prefect: {how} this machine's local server, UI at {self.url} (it stops after "
                f"{self.idle_minutes:g} min without runs; NANO3_LOCAL_SERVER_IDLE_MINUTES=0 for one per command)")


#: This process's server, once it has one, and the lock that keeps it up.
_current: dict[str, object] = {}


def use_local_server() -> LocalServer | None:
    """This machine's local Prefect server for this process (started if none runs), with
    PREFECT_API_URL set to it; None when a server is configured or the local server is off."""
    found = _current.get("server")
    if isinstance(found, LocalServer):
        return found
    from prefect.settings import get_current_settings

    from blocks.tool_settings import tool_settings

    settings = get_current_settings()
    idle = tool_settings().local_server_idle_minutes
    if settings.api.url or not settings.server.ephemeral.enabled or idle == 0:
        return None
    files = server_files(settings)
    files.home.mkdir(parents=True, exist_ok=True)
    users = _lock(files.users, fcntl.LOCK_SH)  # held until this process exits
    url, started = _running_url(files), False
    if url is None:
        with contextlib.closing(_lock(files.starting, fcntl.LOCK_EX)):
            url = _running_url(files)
            if url is None:
                url, started = _start(files, idle, settings.server.ephemeral.startup_timeout_seconds), True
    server = LocalServer(url=url, started=started, idle_minutes=idle, log=files.log)
    _current.update(server=server, users=users)
    os.environ["PREFECT_API_URL"] = server.api_url
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
    return server


@contextlib.contextmanager
def api_for_workers() -> Iterator[str]:
    """This command's Prefect API as a URL the processes it starts can report to (Ray's workers run
    Prefect tasks). A configured or local server's URL is known; Prefect's temporary server (local
    server turned off) is started here rather than on first use, for the length of the block, so
    that its URL is known before the workers start: each would start a server of its own else."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    use_local_server()
    settings = get_current_settings()
    if settings.api.url:
        yield settings.api.url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=settings.server.ephemeral.startup_timeout_seconds)
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
            _send_queued()
    finally:
        server.stop()


def _send_queued() -> None:
    """Send the logs and events still queued to the server before it stops; after, each would be
    retried against a closed port for a minute or more at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=30)


def stop_local_servers(home: Path, timeout: float = 60.0) -> list[str]:
    """Stop every local server under `home` (a PREFECT_HOME): the URLs they served. The next
    command starts a new one; a command using one waits for its stop, then starts another."""
    stopped = []
    for state in sorted(home.glob("nano3-server-*.json")):
        try:
            found = json.loads(state.read_text())
            os.kill(int(found["supervisor"]), signal.SIGTERM)
        except (OSError, ValueError, KeyError, TypeError):
            state.unlink(missing_ok=True)  # its supervisor is gone: nothing serves it
            continue
        deadline = time.monotonic() + timeout
        while _alive(int(found["supervisor"])) and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped.append(str(found["url"]))
    return stopped


def _alive(pid: int) -> bool:
    """Running, not a zombie. Not runtime.process_alive: the supervisor may have started after
    the process asking (a bench, a test), which that check reads as a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def server_files(settings: object) -> ServerFiles:
    import prefect

    url = settings.server.database.connection_url  # type: ignore[attr-defined]
    database = url.get_secret_value() if url is not None else ""
    key = hashlib.sha256(f"{database}\n{prefect.__version__}".encode()).hexdigest()[:12]
    return ServerFiles.of(Path(settings.home), key)  # type: ignore[attr-defined]


def _lock(path: Path, kind: int) -> IO[str]:
    handle = path.open("a")
    fcntl.flock(handle, kind)
    return handle


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _running_url(files: ServerFiles) -> str | None:
    try:
        state = json.loads(files.state.read_text())
    except (OSError, ValueError):
        return None
    url = state.get("url")
    return url if isinstance(url, str) and _healthy(url) else None


def _start(files: ServerFiles, idle: float, timeout: float) -> str:
    """Start a supervisor and wait until its server answers; its log tells why when it does not."""
    files.state.unlink(missing_ok=True)
    with files.log.open("a") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "blocks.prefect_server", "--home", str(files.home), "--key", files.key,
             "--idle-minutes", f"{idle:g}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=_supervisor_env(),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        url = _running_url(files)
        if url is not None:
            return url
        if supervisor.poll() is not None:
            break
        time.sleep(0.2)
    if supervisor.poll() is None:
        supervisor.terminate()
    tail = "\n".join(files.log.read_text(errors="replace").splitlines()[-15:])
    raise ConfigError(
        f"the local Prefect server did not start within {timeout:g} s (log {files.log}):\n{tail}",
        hint="set PREFECT_API_URL to a running server, or NANO3_LOCAL_SERVER_IDLE_MINUTES=0 for Prefect's temporary one",
    )


def _supervisor_env() -> dict[str, str]:
    """The command's environment, with the project importable; the server sends no telemetry
    unless the user asked for it (machines without internet log a traceback per attempt)."""
    project = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **os.environ,
            "PYTHONPATH": f"{project}{os.pathsep}{path}" if path else project}


# --- the supervisor: its own process, without Prefect imported ----------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_state(files: ServerFiles, state: dict[str, object]) -> None:
    partial = files.state.with_suffix(".json.partial")
    partial.write_text(json.dumps(state))
    partial.replace(files.state)


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group (its web server may outlive its first process)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline and (server.poll() is None or _group_left(server.pid)):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _group_left(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def _unused(files: ServerFiles) -> Iterator[bool]:
    """Whether no command uses the server; while True, none can start using it."""
    with files.users.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def supervise(files: ServerFiles, idle_minutes: float) -> int:
    """Run `prefect server start` until it has been unused for `idle_minutes`, or its PREFECT_HOME
    is gone, or this process is told to stop; the state file names it while it answers."""
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: stopping.append(number))
    for _attempt in range(3):  # another process may take the free port before the server binds it
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "WARNING"],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        while server.poll() is None and not stopping and not _healthy(url, timeout=1.0):
            time.sleep(0.2)
        if server.poll() is None:
            break
    else:
        return 1
    if stopping:
        _stop(server)
        return 0
    _write_state(files, {"url": url, "supervisor": os.getpid(), "server": server.pid, "started": time.time()})
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} serving {url}, stopping after {idle_minutes:g} min unused", flush=True)
    last_used = time.monotonic()
    while True:
        time.sleep(CHECK_SECONDS)
        if server.poll() is not None:
            files.state.unlink(missing_ok=True)
            return 1
        with _unused(files) as unused:
            if not unused:
                last_used = time.monotonic()
            # Stopped while no command can start using it: one that arrives now waits, then starts another.
            if stopping or not files.home.is_dir() or (unused and time.monotonic() - last_used >= idle_minutes * 60):
                files.state.unlink(missing_ok=True)
                _stop(server)
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} stopped {url}", flush=True)
                return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blocks.prefect_server", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--idle-minutes", type=float, required=True)
    args = parser.parse_args(argv)
    return supervise(ServerFiles.of(args.home, args.key), args.idle_minutes)


if __name__ == "__main__":
    sys.exit(main())

"""Start and stop throwaway daemons by pid file, for local_slurm.py, local_s3.py and local_postgres.py.

Every daemon runs in the foreground of its own session, so the pid we record is the daemon
itself, and `stop` signals exactly the pids in its pid files: never a process found by name,
which on a shared machine could be someone else's. A pid file whose process has gone, or
whose pid now belongs to another program, counts as stopped.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class DevServiceError(RuntimeError):
    """A one-line problem for the user, with a hint; the command line prints it and exits 2."""


class MissingPrerequisite(DevServiceError):
    """A program or privilege this machine lacks (tests skip on it; the fix is an install)."""


def require_command(name: str, hint: str, extra_dirs: Sequence[Path] = ()) -> str:
    """Absolute path of `name`, looked up in `extra_dirs` first, then PATH (sbin included)."""
    for folder in extra_dirs:
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search_path)
    if not found:
        raise MissingPrerequisite(f"{name} not found: {hint}")
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that nobody listens on right now (the kernel picks them).

    All sockets stay open until every port is chosen, so the kernel cannot hand out one twice.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_pairs(count: int, offset: int) -> list[int]:
    """`count` free ports P whose P + `offset` is free too (servers that put gRPC on port + 10000)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 65535 - offset)
        pair = {port, port + offset}
        if pair & {p + d for p in chosen for d in (0, offset)}:
            continue
        if all(port_is_free(candidate) for candidate in pair):
            chosen.append(port)
    return chosen


def port_is_free(port: int) -> bool:
    """Nobody listens on `port`. A port a stopped server left in TIME_WAIT counts as free: servers
    set SO_REUSEADDR, so a restarted one gets it back."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def read_pid(pid_file: Path, program: str) -> int | None:
    """The pid in `pid_file` if that process is alive and still runs `program`, else None.

    Checking the program guards against pid reuse after a reboot or a crash.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if any(program.encode() in part for part in process_arguments(pid)[:2]) else None


def start_daemon(
    argv: Sequence[str],
    pid_file: Path,
    log_file: Path,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> int:
    """Run `argv` (a daemon kept in the foreground) in its own session; record its pid."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            user=user,
            start_new_session=True,
        )
    # /proc/PID/cmdline can read empty for a moment after Popen returns (seen under gVisor):
    # wait for the exec so that read_pid recognises the daemon.
    deadline = time.monotonic() + 5
    while not process_arguments(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pid_file.write_text(f"{process.pid}\n")
    return process.pid


def process_arguments(pid: int) -> list[bytes]:
    """The arguments of a live process; empty for a zombie (exited, not yet reaped) or none."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return []


def stop_pid(pid_file: Path, program: str, *, timeout: float = 30, sig: int = signal.SIGTERM) -> bool:
    """Signal the pid recorded in `pid_file` and wait for it to exit; True if it was running."""
    pid = read_pid(pid_file, program)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    for signal_to_send, wait in ((sig, timeout), (signal.SIGKILL, 10)):
        try:
            os.kill(pid, signal_to_send)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while read_pid(pid_file, program) == pid and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if read_pid(pid_file, program) != pid:
            break
    pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect an exited child of this process (fixtures start daemons as children)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_until(ready: Callable[[], bool], *, what: str, timeout: float, log_file: Path | None = None,
               alive: Callable[[], bool] | None = None) -> None:
    """Poll `ready` until it is true; fail with the tail of the log if time runs out or the daemon dies."""
    deadline = time.monotonic() + timeout
    while not ready():
        died = alive is not None and not alive()
        if died or time.monotonic() > deadline:
            reason = "exited" if died else f"did not answer within {timeout:.0f} s"
            tail = ""
            if log_file is not None and log_file.is_file():
                lines = log_file.read_text(errors="replace").strip().splitlines()[-5:]
                tail = " | ".join(lines)
            raise DevServiceError(f"{what} {reason}; log {log_file}: {tail}" if log_file else f"{what} {reason}")
        time.sleep(0.2)


def command_line(description: str, default_dir: str) -> argparse.ArgumentParser:
    """The shape every service script shares: `start|stop|status [--dir DIR]`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=Path(default_dir),
                        help=f"folder holding the service's data, config, logs and pid files (default {default_dir})")
    return parser


def run_command_line(action: Callable[[], int]) -> int:
    """Run one action; print a DevServiceError as a single `error:` line, exit code 2."""
    try:
        return action()
    except DevServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

#!/usr/bin/env python3
"""A throwaway PostgreSQL on this machine, for a Prefect server that many runs write to at once.

    .venv/bin/python scripts/dev/local_postgres.py start [--dir DIR] [--port N] [--database NAME]
    .venv/bin/python scripts/dev/local_postgres.py status|stop [--dir DIR]

Prefect's default SQLite serialises writers; a pipeline with parallel stages, or several flows
at once, wants PostgreSQL. The cluster lives under one folder, listens on 127.0.0.1 only (its
Unix socket in that folder too) and trusts local connections, so use it for trying things,
never for data you keep. Run as root, it runs as user `postgres` (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_daemons import (  # noqa: E402
    DevServiceError,
    command_line,
    free_ports,
    port_is_free,
    read_pid,
    require_command,
    run_command_line,
    stop_pid,
)

DEFAULT_DIR = ".nano3/dev/postgres"
DEFAULT_DATABASE = "prefect"
INSTALL_HINT = "run scripts/dev/install_packages.sh (apt-get install postgresql)"
#: Debian keeps the server programs out of PATH, one folder per major version.
SERVER_BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name), reverse=True)


@dataclass
class PostgresServer:
    dir: str
    port: int
    database: str

    @property
    def url(self) -> str:
        """SQLAlchemy URL with the asyncpg driver, as PREFECT_API_DATABASE_CONNECTION_URL wants it."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"


def _files(folder: Path) -> tuple[Path, Path, Path]:
    folder = folder.resolve()
    return folder / "data", folder / "postgres.log", folder / "server.json"


def is_running(folder: Path) -> bool:
    data, _, _ = _files(folder)
    return read_pid(data / "postmaster.pid", "postgres") is not None


def start_postgres(folder: Path, *, port: int | None = None, database: str = DEFAULT_DATABASE,
                   timeout: float = 60) -> PostgresServer:
    """initdb on first use, start the server, wait until it accepts connections, create `database`."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise DevServiceError(f"database name {database!r}: use letters, digits and underscores")
    folder = folder.resolve()
    data, log_file, server_file = _files(folder)
    programs = {name: require_command(name, INSTALL_HINT, extra_dirs=[Path(d) for d in SERVER_BIN_DIRS])
                for name in ("initdb", "pg_ctl", "psql")}
    user = "postgres" if os.geteuid() == 0 else None
    if is_running(folder):
        if not server_file.is_file():
            raise DevServiceError(f"running in {folder} but {server_file.name} is missing; stop it first")
        server = PostgresServer(**json.loads(server_file.read_text()))
    else:
        folder.mkdir(parents=True, exist_ok=True)
        if user:
            _hand_to(folder, user)
        if not (data / "PG_VERSION").is_file():
            _run([programs["initdb"], "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
                  "--encoding=UTF8", "--locale=C"], user, what="initdb")
        server = PostgresServer(dir=str(folder), port=port or _last_port(server_file) or free_ports(1)[0],
                                database=database)
        options = f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1"
        _run([programs["pg_ctl"], "-D", str(data), "-l", str(log_file), "-o", options, "-w",
              "-t", str(int(timeout)), "start"], user, what="pg_ctl start", log_file=log_file)
    server.database = database
    _create_database(programs["psql"], server, user)
    server_file.write_text(json.dumps(asdict(server), indent=2) + "\n")
    return server


def stop_postgres(folder: Path) -> bool:
    """Fast shutdown (SIGINT) of the server whose pid is in the data folder's postmaster.pid."""
    data, _, _ = _files(folder)
    return stop_pid(data / "postmaster.pid", "postgres", sig=signal.SIGINT)


def _last_port(server_file: Path) -> int | None:
    """The port of the previous start if it is still free: the URL a user exported keeps working."""
    if not server_file.is_file():
        return None
    port = json.loads(server_file.read_text())["port"]
    return port if port_is_free(port) else None


def _hand_to(folder: Path, user: str) -> None:
    """Give the folder to `user` and check that user can reach it (every parent must let others in)."""
    account = pwd.getpwnam(user)
    os.chown(folder, account.pw_uid, account.pw_gid)
    for path in folder.rglob("*"):
        os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    if subprocess.run(["test", "-w", str(folder)], user=user).returncode != 0:
        raise DevServiceError(f"user {user} cannot reach {folder} (a parent folder is closed to others); "
                              "use a --dir under /tmp")


def _run(argv: list[str], user: str | None, *, what: str, log_file: Path | None = None) -> None:
    done = subprocess.run(argv, user=user, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        if log_file is not None and log_file.is_file():
            detail += log_file.read_text(errors="replace").strip().splitlines()[-3:]
        raise DevServiceError(f"{what} failed: {' | '.join(detail)}")


def _create_database(psql: str, server: PostgresServer, user: str | None) -> None:
    connect = [psql, "-h", server.dir, "-p", str(server.port), "-U", "postgres", "-d", "postgres", "-tAc"]
    found = subprocess.run([*connect, f"SELECT 1 FROM pg_database WHERE datname = '{server.database}'"],
                           user=user, capture_output=True, text=True, cwd="/")
    if found.stdout.strip() != "1":
        _run([*connect, f'CREATE DATABASE "{server.database}"'], user, what=f"creating database {server.database}")


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__.splitlines()[0], DEFAULT_DIR)
    parser.add_argument("--port", type=int, help="default: a free one")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help=f"created if missing (default {DEFAULT_DATABASE})")
    args = parser.parse_args(argv)

    def act() -> int:
        if args.action == "stop":
            print("stopped" if stop_postgres(args.dir) else "not running")
            return 0
        if args.action == "status":
            running = is_running(args.dir)
            print("running" if running else "stopped")
            return 0 if running else 1
        already = is_running(args.dir)
        started = time.monotonic()
        server = start_postgres(args.dir, port=args.port, database=args.database)
        print(f"already running in {server.dir}" if already else f"started in {time.monotonic() - started:.1f} s")
        print(f"export PREFECT_API_DATABASE_CONNECTION_URL={server.url}")
        return 0

    return run_command_line(act)


if __name__ == "__main__":
    sys.exit(main())

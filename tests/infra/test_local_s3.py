"""The local S3 server is one s3fs (and so the artifact store) can use, and it checks signatures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import local_s3
import pytest
import s3fs
from local_s3 import S3Server


def test_s3fs_writes_lists_and_reads_back(s3_server: S3Server) -> None:
    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    folder = f"{s3_server.bucket}/runs/one"

    fs.pipe(f"{folder}/manifest.json", b'{"ok": true}')
    fs.pipe(f"{folder}/weights.bin", os.urandom(6 * 2**20))  # above s3fs's 5 MiB part size: multipart

    assert sorted(fs.ls(folder)) == [f"{folder}/manifest.json", f"{folder}/weights.bin"]
    assert fs.cat(f"{folder}/manifest.json") == b'{"ok": true}'
    assert fs.size(f"{folder}/weights.bin") == 6 * 2**20


def test_requests_without_the_right_keys_are_refused(s3_server: S3Server) -> None:
    anonymous = s3fs.S3FileSystem(anon=True, client_kwargs={"endpoint_url": s3_server.endpoint})
    wrong_secret = s3fs.S3FileSystem(key=s3_server.access_key, secret="not-the-secret",
                                     client_kwargs={"endpoint_url": s3_server.endpoint})

    with pytest.raises(PermissionError):
        anonymous.ls(s3_server.bucket, refresh=True)
    with pytest.raises(PermissionError):
        wrong_secret.pipe(f"{s3_server.bucket}/intruder.txt", b"x")


def test_the_command_line_starts_reports_and_stops_a_server(tmp_path: Path) -> None:
    script = local_s3.__file__
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "cli-key", "AWS_SECRET_ACCESS_KEY": "cli-secret"}
    folder = tmp_path / "s3"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, *args, "--dir", str(folder)], env=env,
                              capture_output=True, text=True, timeout=120)

    started = run("start", "--bucket", "cli-bucket")
    try:
        endpoint = next(line.split("=", 1)[1] for line in started.stdout.splitlines()
                        if line.startswith("export AWS_ENDPOINT_URL="))
        listed = s3fs.S3FileSystem(key="cli-key", secret="cli-secret", client_kwargs={"endpoint_url": endpoint}).ls("")
        running = run("status")
    finally:
        stopped = run("stop")

    assert started.returncode == 0, started.stderr
    assert "cli-secret" not in started.stdout
    assert listed == ["cli-bucket"]
    assert (running.returncode, running.stdout.strip()) == (0, f"running at {endpoint}")
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "stopped")
    assert run("status").returncode == 1

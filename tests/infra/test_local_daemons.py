"""Pid files decide what `stop` may kill; a missing program is one line with the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import local_s3
import local_slurm
import pytest
from local_daemons import MissingPrerequisite, read_pid, require_command, start_daemon, stop_pid


def test_stop_ends_the_daemon_in_its_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleep.pid"
    pid = start_daemon(["sleep", "300"], pid_file, tmp_path / "sleep.log")

    assert read_pid(pid_file, "sleep") == pid
    assert stop_pid(pid_file, "sleep") is True
    assert read_pid(pid_file, "sleep") is None and not pid_file.exists()
    assert stop_pid(pid_file, "sleep") is False


def test_a_pid_now_running_another_program_is_left_alone(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "300"])
    pid_file = tmp_path / "weed.pid"
    pid_file.write_text(f"{bystander.pid}\n")  # as after a crash, when the pid went to someone else
    try:
        assert stop_pid(pid_file, "weed") is False
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_missing_program_names_the_install_command() -> None:
    with pytest.raises(MissingPrerequisite) as missing:
        require_command("slurmctld-not-installed", local_slurm.INSTALL_HINT)

    assert str(missing.value) == ("slurmctld-not-installed not found: run scripts/dev/install_packages.sh "
                                  "(apt-get install slurm-wlm slurmdbd mariadb-server munge)")


def test_the_command_line_prints_one_error_line_and_exits_2(tmp_path: Path) -> None:
    ran = subprocess.run([sys.executable, local_s3.__file__, "start",
                          "--dir", str(tmp_path / "s3"), "--access-key", "", "--secret-key", ""],
                         capture_output=True, text=True)

    assert ran.returncode == 2
    assert ran.stderr.splitlines() == [
        "error: no S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --access-key/--secret-key)"]

"""Following a job's log: one file per job, whole lines, launcher prefixes removed."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.submit import LogTail


def test_follows_the_combined_log_only_and_strips_launcher_prefixes(tmp_path: Path) -> None:
    job = tmp_path / "pretrain-abc" / "pretrain" / "0"
    rank = tmp_path / "pretrain-abc" / "torchelastic" / "attempt_0" / "0"
    job.mkdir(parents=True)
    rank.mkdir(parents=True)
    combined, rank_stdout = job / "combined.log", rank / "stdout.log"
    combined.write_text('[default0]:NANO3_PROGRESS {"step": 10}\n[pretrain/0]: loading data\npartial')
    rank_stdout.write_text('NANO3_PROGRESS {"step": 10}\n')
    os.utime(rank_stdout, (combined.stat().st_mtime + 5,) * 2)  # torchrun's copy is written later
    lines: list[str] = []
    tail = LogTail(str(tmp_path), lines.append)
    tail.poll()
    assert lines == ['NANO3_PROGRESS {"step": 10}', "loading data"]
    with combined.open("a") as handle:
        handle.write(" line\n[default0]:done\n")
    tail.poll()
    tail.poll()
    assert lines[2:] == ["partial line", "done"]
    assert tail.last[-1] == "done"


def test_slurm_output_files_are_followed(tmp_path: Path) -> None:
    (tmp_path / "log-account.pretrain_42_0.out").write_text("step 1\n")
    lines: list[str] = []
    LogTail(str(tmp_path), lines.append).poll()
    assert lines == ["step 1"]


def test_no_folder_yet_is_not_an_error(tmp_path: Path) -> None:
    lines: list[str] = []
    LogTail(str(tmp_path / "not-yet"), lines.append).poll()
    LogTail(None, lines.append).poll()
    assert lines == []


def test_lines_written_after_the_job_ended_are_still_read(tmp_path: Path) -> None:
    import threading
    import time

    log = tmp_path / "job" / "combined.log"
    log.parent.mkdir()
    log.write_text("step 1\n")
    lines: list[str] = []
    tail = LogTail(str(tmp_path), lines.append)
    tail.poll()

    def late_flush() -> None:  # the launcher copies the last output a moment after the job ended
        time.sleep(0.5)
        with log.open("a") as handle:
            handle.write("step 2\nmanifest: out/manifest.json\n")

    writer = threading.Thread(target=late_flush)
    writer.start()
    tail.drain(quiet_seconds=1.0, limit_seconds=5.0)
    writer.join()
    assert lines == ["step 1", "step 2", "manifest: out/manifest.json"]

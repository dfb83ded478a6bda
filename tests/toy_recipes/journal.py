"""What every toy job appends to `work_dir/jobs.jsonl` when it starts, for the reliability tests.

Each line: the job's pid, its start time, the pids of earlier jobs of the same work folder that
were still alive then (two live jobs on one work folder would be a duplicate submission), and
whether the stage's manifest already existed (a finished stage submitted again).
"""

import json
import os
import time
from pathlib import Path

from recipes.nano3.manifest import MANIFEST_NAME

JOURNAL = "jobs.jsonl"


def _alive(pid: int) -> bool:
    """Running, not a zombie: an orphan reaped late still answers kill(pid, 0)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def record_start(work_dir: Path, output_dir: Path) -> None:
    journal = work_dir / JOURNAL
    earlier = [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
    entry = {
        "pid": os.getpid(),
        "started": time.time(),
        "overlaps": [e["pid"] for e in earlier if e["pid"] != os.getpid() and _alive(e["pid"])],
        "output_done": (output_dir / MANIFEST_NAME).exists(),
    }
    with journal.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")

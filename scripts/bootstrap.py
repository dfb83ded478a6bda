#!/usr/bin/env python3
"""Create or refresh `.venv` from `requirements.lock`, then install this project into it.

Only Python and pip are assumed. uv does the install because it honours the lock's hashes and
is fast; the lock already carries the resolution of the nemo-run ⇄ prefect pin conflict (see
pyproject.toml, [tool.uv]), so installing never resolves anything. A stamp file makes a second
call with an unchanged lock a no-op.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".nano3-lock-sha256"


def _uv() -> list[str]:
    if shutil.which("uv"):
        return ["uv"]
    probe = subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "uv"], check=True)
    return [sys.executable, "-m", "uv"]


def _fingerprint() -> str:
    digest = hashlib.sha256(LOCK.read_bytes())
    digest.update((ROOT / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def main() -> int:
    want = _fingerprint()
    if STAMP.is_file() and STAMP.read_text().strip() == want:
        return 0
    uv = _uv()
    env = dict(os.environ, VIRTUAL_ENV=str(VENV))
    if not (VENV / "bin" / "python").exists():
        subprocess.run([*uv, "venv", "--python", sys.executable, str(VENV)], check=True)
    subprocess.run([*uv, "pip", "sync", "--python", str(VENV / "bin" / "python"), str(LOCK)], check=True, env=env)
    subprocess.run(
        [*uv, "pip", "install", "--python", str(VENV / "bin" / "python"), "--no-deps", "-e", str(ROOT)],
        check=True,
        env=env,
    )
    STAMP.write_text(want + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

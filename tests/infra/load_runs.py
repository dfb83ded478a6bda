"""Many toy pipeline runs at once against one Prefect server, their jobs on the local Slurm, one
artifact store: what tests/infra/test_load.py checks and bench/load.py times.

Runs come as distinct configs (`toy/produce:scale=N`, each its own jobs) and pairs of identical
ones (the two share each stage's one submission: one runs it, the other waits and reuses it).
Every run is a user of its own (HOME, NeMo-Run home, working folder) with the same env.toml and
store. While they run, the server's API is asked every half second (a flow-run listing, what the
UI's runs page asks); each answer's time is recorded.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from blocks.env_toml_writer import render_env_toml
from tasks.artifacts import ArtifactStore
from tests.infra.slurm_stages import slurm_section
from tests.reliability.runs import Sandbox

PROFILE = "local-slurm"


@dataclass
class LoadRun:
    name: str
    config: tuple[str, ...]
    sandbox: Sandbox
    process: subprocess.Popen | None = None
    started: float = 0.0
    wall: float | None = None

    @property
    def results(self) -> list[dict]:
        path = self.sandbox.root / "results.json"
        return json.loads(path.read_text()) if path.exists() else []


@dataclass
class Load:
    runs: list[LoadRun]
    store: ArtifactStore
    #: Seconds each API call took while the runs ran.
    latencies: list[float] = field(default_factory=list)
    #: API calls that failed (or took over 30 s) while the runs ran.
    failures: int = 0


def configs(distinct: int, pairs: int) -> list[tuple[str, tuple[str, ...]]]:
    """(name, overrides): `distinct` single runs, then `pairs` configs run twice."""
    single = [(f"d{n}", (f"toy/produce:scale={n + 2}",)) for n in range(distinct)]
    paired = [(f"p{n}{side}", (f"toy/produce:scale={100 + n}",)) for n in range(pairs) for side in "ab"]
    return single + paired


def probe(api_url: str, load: Load, stop: threading.Event) -> None:
    body = json.dumps({"limit": 50, "sort": "START_TIME_DESC"}).encode()
    while not stop.wait(0.5):
        request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
            load.latencies.append(time.perf_counter() - started)
        except OSError:
            load.failures += 1


def run_load(root: Path, api_url: str, slurm_env: dict[str, str], *, distinct: int = 10, pairs: int = 5,
             timeout: float = 1500) -> Load:
    """Starts every run at once, waits for all, with the API probed meanwhile."""
    root.mkdir(parents=True, exist_ok=True)
    env_file = root / "env.toml"
    # Each run's jobs in its own NeMo-Run home: with the local tunnel, sbatch reads the script there.
    env_file.write_text(render_env_toml({PROFILE: slurm_section(None)}))
    store_root = root / "store"
    load = Load([LoadRun(name, config, Sandbox(root / name, api_url)) for name, config in configs(distinct, pairs)],
                ArtifactStore(str(store_root)))
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(api_url, load, stop), daemon=True)
    prober.start()
    try:
        for run in load.runs:
            run.started = time.monotonic()
            run.process = run.sandbox.start("-r", PROFILE, *run.config, results=run.sandbox.root / "results.json",
                                            NEMOTRON_ENV_FILE=str(env_file), NANO3_ARTIFACTS_ROOT=str(store_root),
                                            **slurm_env)
        deadline = time.monotonic() + timeout
        while any(run.wall is None for run in load.runs) and time.monotonic() < deadline:
            for run in load.runs:
                if run.wall is None and run.process is not None and run.process.poll() is not None:
                    run.wall = time.monotonic() - run.started
            time.sleep(0.2)
    finally:
        stop.set()
        prober.join()
        for run in load.runs:
            if run.process is not None and run.process.poll() is None:
                run.process.kill()
                run.process.wait()
    return load

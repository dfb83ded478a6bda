"""Running the toy pipeline (tests.reliability.toy_pipeline) as separate processes, and reading
back what they left in the store: the registry, the manifests, the jobs' journals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tasks.artifacts import ArtifactError, ArtifactStore
from tests.reliability.toy_pipeline import TOY_STAGES

PROJECT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sandbox:
    """One user's folders: working directory, HOME, artifact store, NeMo-Run home."""

    root: Path
    prefect_api: str

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(str(self.root / "store"))

    def env(self, **extra: str | None) -> dict[str, str]:
        """The environment of a run; an `extra` value of None removes that variable."""
        env = {k: v for k, v in os.environ.items() if k not in ("NEMOTRON_ENV_FILE", "NANO3_ARTIFACTS_ROOT")}
        env.update(
            HOME=str(self.root / "home"),
            PREFECT_HOME=str(self.root / "home" / ".prefect"),
            PREFECT_API_URL=self.prefect_api,
            NANO3_ARTIFACTS_ROOT=str(self.root / "store"),
            NEMORUN_HOME=str(self.root / "nemorun"),
            WANDB_MODE="offline",
            PYTHONPATH=str(PROJECT),
        )
        for name, value in extra.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def start(self, *args: str, results: Path | None = None, log: Path | None = None,
              module: str = "tests.reliability.toy_pipeline", new_session: bool = False,
              **extra: str | None) -> subprocess.Popen:
        """`python -m tests.reliability.toy_pipeline ARGS` (or another pipeline module) in the background.

        `new_session`: in a session and process group of its own, as a terminal starts a command
        (`os.killpg(process.pid, SIGINT)` is then the terminal's Ctrl-C)."""
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        (self.root / "work").mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", module, *args]
        if results is not None:
            command += ["--results", str(results)]
        output = (log or self.root / "orchestrator.log").open("a")
        return subprocess.Popen(command, cwd=self.root / "work", env=self.env(**extra), stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=new_session)

    def run(self, *args: str, timeout: float = 300, **extra: str | None) -> tuple[int, list[dict]]:
        """Run to the end; (exit code, the stage results it reported)."""
        results = self.root / f"results-{os.urandom(4).hex()}.json"
        process = self.start(*args, results=results, **extra)
        code = process.wait(timeout=timeout)
        return code, json.loads(results.read_text()) if results.exists() else []

    def log(self) -> str:
        path = self.root / "orchestrator.log"
        return path.read_text(errors="replace") if path.exists() else ""


def finished_stages(store: ArtifactStore) -> set[str]:
    """Stages with a manifest in the store: the ones that finished, whatever was published."""
    return {stage.id for stage in TOY_STAGES if list(Path(store.root, stage.slug).glob("*/manifest.json"))}


def submitted_stages(store: ArtifactStore) -> set[str]:
    """Stages with a submission record: a job was started for them."""
    by_key = {}
    for path in Path(store.root, "_runs").glob("*.json"):
        record = store.read_record(path.stem)
        if record is not None:
            by_key[record.cache_key] = record.stage
    return set(by_key.values())


def journal(store: ArtifactStore) -> dict[str, list[dict]]:
    """Each stage's job starts (tests/toy_recipes/journal.py), over all its work folders."""
    found: dict[str, list[dict]] = {}
    for stage in TOY_STAGES:
        for path in Path(store.root, "_work", stage.slug).glob("*/jobs.jsonl"):
            found.setdefault(stage.id, []).extend(json.loads(line) for line in path.read_text().splitlines())
    return found


def registry_problems(store: ArtifactStore) -> list[str]:
    """Every published version must have its manifest, the same digest, and files that match it;
    `latest` must be the newest version; no temporary file may be left in the registry."""
    problems = []
    registry = Path(store.root, "_registry")
    for folder in sorted(registry.glob("*")) if registry.exists() else []:
        numbers = sorted(int(p.stem[1:]) for p in folder.glob("v*.json"))
        # `aliases/` holds the moves of `production` and the like (tasks/aliases.py), `gate/` the
        # evaluation gate's decisions (tasks/gate.py).
        leftovers = [p.name for p in folder.iterdir() if p.suffix != ".json" and p.name not in ("aliases", "gate")]
        if leftovers:
            problems.append(f"{folder.name}: left behind {leftovers}")
        for number in numbers:
            version = store.version(folder.name, f"v{number}")
            assert version is not None
            manifest = store.read_manifest(version.uri)
            if manifest is None or manifest.digest != version.digest:
                problems.append(f"{version.ref}: manifest {'missing' if manifest is None else manifest.digest}")
                continue
            try:
                store.verify(folder.name, version.uri, manifest)
            except ArtifactError as exc:
                problems.append(str(exc))
        latest = store.latest(folder.name)
        if numbers and (latest is None or latest.version != f"v{numbers[-1]}"):
            problems.append(f"{folder.name}: latest is {latest.version if latest else None}, newest is v{numbers[-1]}")
    return problems


def versions(store: ArtifactStore) -> dict[str, int]:
    registry = Path(store.root, "_registry")
    return {p.name: len(list(p.glob("v*.json"))) for p in registry.glob("*")} if registry.exists() else {}


def run_as_command(argv: list[str]) -> int:
    """The toy pipeline stopped as a command's run is (flows.stop_signals.stopped_by_signals: one way to
    stop for `kill` and Ctrl-C, Prefect's temporary server in its own session)."""
    from flows.stop_signals import stopped_by_signals
    from tests.reliability.toy_pipeline import main

    with stopped_by_signals():
        return main(argv)


if __name__ == "__main__":
    # `python -m tests.reliability.runs ARGS`: Sandbox.start(..., module="tests.reliability.runs").
    sys.exit(run_as_command(sys.argv[1:]))

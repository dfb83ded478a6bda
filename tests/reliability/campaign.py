"""Crash campaign: SIGKILL the orchestrator at seeded random points of a pipeline run, rerun.

The pipeline is the toy one (tests.reliability.toy_pipeline): the real flow, stage task,
NeMo-Run local jobs, store and registry, with recipes that checkpoint and resume but take
seconds, so twenty kill/rerun cycles take minutes. One uninterrupted run is timed first; the
kill points are drawn from it with a seeded RNG, so a campaign is reproducible in where it
strikes, if not to the millisecond. Each cycle starts from an empty store, kills the
orchestrator (only it: its jobs must stop themselves), reruns at once, and counts:

- runs finished: reruns that exit 0 with every stage published;
- duplicate submissions: a job started while an earlier job of the same stage was still alive,
  or for a stage whose manifest already existed (the jobs' journals), and registry versions
  beyond v1 (one run of one config publishes each artifact once);
- bad digests: published versions whose manifest or files do not match the registry;
- finished stages redone: stages with a manifest when the orchestrator died that the rerun
  did not report as cached, or for which any job started after the kill.

Used by tests/reliability/test_crash_campaign.py (one seed) and bench/crash_campaign.py (several).
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.reliability.runs import Sandbox, finished_stages, journal, registry_problems, submitted_stages, versions
from tests.reliability.toy_pipeline import TOY_STAGES

#: Every toy stage takes a checkpoint per step; these make the training stage the longest.
OVERRIDES = ("toy/produce:steps=4", "toy/train:steps=8", "toy/train:sleep=0.75")
#: The pipeline's results whatever the kills: numbers 0,2,4,6 → total 12; training 8 steps of +12.
EXPECTED = {"toy-total": {"total": 12}, "toy-model": {"weight": 96}}
#: W&B mirroring is off: it is no part of the exactly-once contract, and it would take a third of
#: a stage's time on 2 cores, where the kills would then mostly land.
WANDB = {"WANDB_MODE": "disabled"}


@dataclass
class Cycle:
    kill_after: float
    killed: bool = False
    finished_before: set[str] = field(default_factory=set)
    #: Stages submitted (a record) but without a manifest when the orchestrator died.
    in_flight: set[str] = field(default_factory=set)
    #: The step the training job that finished resumed from (0: it started from scratch).
    train_resumed_from: int = 0
    finished: bool = False
    duplicates: list[str] = field(default_factory=list)
    bad_digests: list[str] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    #: Jobs of the killed run that started after it died and stopped at their job lock.
    stopped_at_lock: int = 0
    #: Whether the rerun waited for a job of the killed run before submitting (the job lock).
    waited_for_job: bool = False
    #: The cycle's folder (store, logs, NeMo-Run experiments).
    root: Path | None = None

    @property
    def problems(self) -> list[str]:
        return [*self.duplicates, *self.bad_digests, *self.redone]


@dataclass
class Campaign:
    seed: int
    #: Seconds of the uninterrupted run the kill points are drawn from.
    duration: float
    cycles: list[Cycle]

    @property
    def problems(self) -> list[str]:
        return [p for c in self.cycles for p in c.problems]


def kill_points(duration: float, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(0.0, duration), 2) for _ in range(count)]


def run_cycle(sandbox: Sandbox, kill_after: float) -> Cycle:
    cycle = Cycle(kill_after, root=sandbox.root)
    store = sandbox.store
    started = time.monotonic()
    orchestrator = sandbox.start(*OVERRIDES, **WANDB)
    while orchestrator.poll() is None and time.monotonic() - started < kill_after:
        time.sleep(0.02)
    if orchestrator.poll() is None:
        orchestrator.send_signal(signal.SIGKILL)
        cycle.killed = True
    orchestrator.wait()
    killed_at = time.time()
    cycle.finished_before = finished_stages(store)
    cycle.in_flight = submitted_stages(store) - cycle.finished_before

    code, results = sandbox.run(*OVERRIDES, **WANDB)
    by_stage = {r["stage"]: r for r in results}
    published = {name: store.latest(name) for name in EXPECTED}
    cycle.finished = (code == 0 and set(by_stage) == {s.id for s in TOY_STAGES}
                      and all(v is not None and v.metrics == EXPECTED[n] for n, v in published.items()))

    model = published["toy-model"]
    manifest = store.read_manifest(model.uri) if model else None
    cycle.train_resumed_from = int(manifest.metadata.get("resumed_from", 0)) if manifest else 0
    jobs = journal(store)
    for stage, entries in jobs.items():
        for entry in entries:
            if entry["overlaps"]:
                cycle.duplicates.append(f"{stage}: job {entry['pid']} started beside live job(s) {entry['overlaps']}")
            if entry["output_done"]:
                cycle.duplicates.append(f"{stage}: job {entry['pid']} started after the stage had finished")
        if len(entries) > 1:
            cycle.resumed.append(stage)
    cycle.duplicates += [f"{name}: {count} versions" for name, count in versions(store).items() if count != 1]
    cycle.bad_digests = registry_problems(store)
    job_logs = Path(sandbox.root, "nemorun").rglob("stdout.log")
    cycle.stopped_at_lock = sum("is gone; not starting" in p.read_text(errors="replace") for p in job_logs)
    cycle.waited_for_job = "waiting for the previous job" in sandbox.log()
    for stage in cycle.finished_before:
        if by_stage.get(stage, {}).get("status") != "cached":
            cycle.redone.append(f"{stage}: rerun says {by_stage.get(stage, {}).get('status')}")
        if any(entry["started"] > killed_at for entry in jobs.get(stage, [])):
            cycle.redone.append(f"{stage}: a job started after the kill")
    return cycle


def run_campaign(root: Path, prefect_api: str, *, kills: int, seed: int,
                 on_cycle: Callable[[int, Cycle], None] | None = None) -> Campaign:
    """Time one uninterrupted run under `root`, then `kills` kill/rerun cycles, each in its own folder."""
    baseline = Sandbox(root / "baseline", prefect_api)
    started = time.monotonic()
    code, results = baseline.run(*OVERRIDES, **WANDB)
    duration = time.monotonic() - started
    if code != 0 or [r["status"] for r in results] != ["ran"] * len(TOY_STAGES):
        raise RuntimeError(f"the uninterrupted run failed ({code}, {results}):\n{baseline.log()[-3000:]}")
    cycles = []
    for number, kill_after in enumerate(kill_points(duration, kills, seed)):
        cycles.append(run_cycle(Sandbox(root / f"cycle-{number:02d}", prefect_api), kill_after))
        if on_cycle is not None:
            on_cycle(number, cycles[-1])
    return Campaign(seed, duration, cycles)


def report(campaign: Campaign) -> str:
    cycles = campaign.cycles
    lines = [
        f"crash campaign: {len(cycles)} kills, seed {campaign.seed}, over a {campaign.duration:.1f} s run",
        f"{'#':>3} {'kill at':>8} {'finished at the kill':<24} {'job killed':<12} {'rerun':<9} {'jobs run again':<16} train resumed",
    ]
    for number, cycle in enumerate(cycles, 1):
        short = lambda stages: ",".join(sorted(s.removeprefix("toy/") for s in stages)) or "-"  # noqa: E731
        at = f"{cycle.kill_after:7.2f}s" if cycle.killed else "  (done)"
        resumed = f"from step {cycle.train_resumed_from}" if cycle.train_resumed_from else "-"
        lines.append(f"{number:>3} {at:>8} {short(cycle.finished_before):<24} {short(cycle.in_flight):<12} "
                     f"{'finished' if cycle.finished else 'FAILED':<9} {short(cycle.resumed):<16} {resumed}")
    lines += [*summary(cycles), *campaign.problems]
    return "\n".join(lines)


def summary(cycles: list[Cycle]) -> list[str]:
    """The campaign's counts, one per line."""
    return [
        f"runs finished: {sum(c.finished for c in cycles)}/{len(cycles)}",
        f"duplicate submissions: {sum(len(c.duplicates) for c in cycles)}",
        f"artifacts whose digests fail: {sum(len(c.bad_digests) for c in cycles)}",
        f"finished stages redone: {sum(len(c.redone) for c in cycles)}",
        f"kills that stopped a running job: {sum(bool(c.in_flight) for c in cycles)}; "
        f"training resumed from a checkpoint: {sum(bool(c.train_resumed_from) for c in cycles)}",
        f"jobs of a killed run that stopped at their job lock: {sum(c.stopped_at_lock for c in cycles)}; "
        f"reruns that waited for a killed run's job: {sum(c.waited_for_job for c in cycles)}",
    ]

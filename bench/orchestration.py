"""What the orchestration costs (P2) and what a rerun of a finished pipeline costs (P3).

    .venv/bin/python bench/orchestration.py                 # 3 repetitions, CI-sized run
    .venv/bin/python bench/orchestration.py --size micro    # a few steps per stage: fixed costs weigh most
    .venv/bin/python bench/orchestration.py --size tiny     # the full laptop run (≈ 11 min each)
    .venv/bin/python bench/orchestration.py --size micro --reruns ROOT --against ../before   # P3 only

`--reruns ROOT` times only the reruns, `--runs` times each, on the finished run under ROOT (a
folder kept with `--keep`), interleaved with `python -c pass` and, with `--against`, with the
same reruns of another checkout (the code before a change): a before/after in one loop. Four
reruns each time: Prefect's temporary server per command (NANO3_LOCAL_SERVER_IDLE_MINUTES=0),
the local server started by the rerun, the local server already running, a configured server.

One repetition, in a fresh folder (own HOME, store, NeMo-Run home, Prefect home):
1. `python -m flows.nano3 <size>` from a clean state, as the README runs it (no Prefect server
   configured: the command starts this machine's local one, blocks/prefect_server.py): wall
   time T_flow, every stage `ran`.
2. The same command again (the local server the first one started still runs): T_rerun, every
   stage `cached`, no submission (no new NeMo-Run experiment, no submission record written).
3. The same command again against a running `prefect server start` (PREFECT_API_URL, as a
   deployment or a user with the UI open has it): T_rerun_server, same checks.
4. The eight recipe scripts (six stages, three data preps) run bare, one after the other, as `python <script> --config
   <the config the flow resolved for it>` with fresh output folders (same inputs, same seed):
   T_bare is the sum of their wall times.
P2 = T_flow / T_bare (goal ≤ 1.10); P3 = T_rerun and T_rerun_server (goal ≤ 5 s, 0 submissions).
`python -c pass` is timed beside the reruns (median of 5, same environment): the reruns are also
reported as ratios to it, which compare across machines and loads (goal ≤ 300×, about 5 s on a
2-core machine where `python -c pass` takes 15-20 ms).
CPU seconds (user + sys of each command's whole process tree) are reported beside the wall times:
they move less than wall time when the machine is shared.
Python runs as installed: bytecode compiled once before the first repetition (a fresh process
otherwise compiles every module it imports, 2 s of each run here).
Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from blocks.prefect_server import stop_local_servers  # noqa: E402
from tasks.stages import STAGES  # noqa: E402
from tests.ci_run import CI_RUN  # noqa: E402
from tests.prefect_server import prefect_server  # noqa: E402
from tests.summary_table import statuses  # noqa: E402

#: The run the CI test makes: small corpus, short training (≈ 1/3 of the laptop run).
SIZES: dict[str, list[str]] = {
    "ci": CI_RUN,
    "tiny": [],
    #: Every stage, a few steps each: the fixed costs (start-up, Prefect, NeMo-Run) weigh most here,
    #: so its ratio bounds the overhead of the longer runs from above.
    "micro": [
        "data_prep/pretrain:corpus.max_bytes=300000",
        "data_prep/pretrain:tokenizer.vocab_size=1024",
        "pretrain:train.train_iters=20",
        "pretrain:train.save_interval=10",
        "pretrain:train.eval_interval=10",
        "sft:train.train_iters=20",
        "sft:train.save_interval=10",
        "sft:train.eval_interval=10",
        "rl:train.train_iters=2",
        "rl:train.save_interval=1",
        "eval:limit=20",
    ],
}


@dataclass
class Timing:
    wall: float
    cpu: float


@dataclass
class Repetition:
    flow: Timing
    rerun: Timing
    rerun_server: Timing
    bare: dict[str, Timing]
    rerun_submissions: int
    #: Median wall seconds of `python -c pass`, timed beside the reruns.
    baseline: float

    @property
    def bare_total(self) -> float:
        return sum(t.wall for t in self.bare.values())

    @property
    def bare_cpu(self) -> float:
        return sum(t.cpu for t in self.bare.values())

    @property
    def overhead_ratio(self) -> float:
        return self.flow.wall / self.bare_total

    @property
    def cpu_ratio(self) -> float:
        return self.flow.cpu / self.bare_cpu


def environment(root: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(root / "home"), PREFECT_HOME=str(root / "home" / ".prefect"),
               NANO3_ARTIFACTS_ROOT=str(root / "store"), NANO3_SCRATCH=str(root / "scratch"), WANDB_MODE="offline",
               NEMORUN_HOME=str(root / "nemorun"), PYTHONUNBUFFERED="1")
    for name in ("PREFECT_API_URL", "NEMOTRON_ENV_FILE", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    return env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> Timing:
    """Wall and CPU seconds of one command; CPU counts every process of its tree that was waited for."""
    cpu = children_cpu()
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return Timing(elapsed, children_cpu() - cpu)


def compile_bytecode() -> None:
    """What an installed environment has after its first use: every module's bytecode cached."""
    for folder in {Path(p) for p in sys.path if p.endswith("site-packages")} | {PROJECT}:
        compileall.compile_dir(folder, quiet=2, workers=0, legacy=False)


def submissions(root: Path) -> set[str]:
    """NeMo-Run experiment folders plus submission records: each submission adds to both."""
    experiments = {p.name for p in (root / "nemorun" / "experiments").glob("*/*")}
    records = {f"{p.name}@{p.stat().st_mtime_ns}" for p in (root / "store" / "_runs").glob("*.json")}
    return experiments | records


def resolved_configs(root: Path) -> dict[str, Path]:
    """stage id → the config file the flow handed its job (kept under the store's _work folder)."""
    found = {}
    for record in (root / "store" / "_runs").glob("*.json"):
        data = json.loads(record.read_text())
        stage = next(s for s in STAGES if s.id == data["stage"])
        found[stage.id] = root / "store" / "_work" / stage.slug / data["cache_key"] / "config.yaml"
    missing = [s.id for s in STAGES if s.id not in found or not found[s.id].is_file()]
    if missing:
        raise SystemExit(f"no resolved config for {missing} under {root / 'store' / '_work'}")
    return found


def run_bare(root: Path, env: dict[str, str]) -> dict[str, Timing]:
    """Each recipe as its own script, outputs in fresh folders, inputs those the flow used."""
    seconds = {}
    for stage, config_file in resolved_configs(root).items():
        script = next(s for s in STAGES if s.id == stage)
        cfg = OmegaConf.load(config_file)
        bare = root / "bare" / script.slug
        cfg.run.output_dir = str(bare / "output")
        cfg.run.work_dir = str(bare / "work")
        bare.mkdir(parents=True)
        OmegaConf.save(cfg, bare / "config.yaml")
        seconds[stage] = timed(
            [sys.executable, str(script.script_path), "--config", str(bare / "config.yaml")],
            cwd=PROJECT, env=dict(env, PYTHONPATH=str(PROJECT)), log=bare / "log.txt",
        )
        if not (bare / "output" / "manifest.json").is_file():
            raise SystemExit(f"{stage}: the bare run wrote no manifest ({bare})")
    return dict(sorted(seconds.items(), key=lambda kv: [s.id for s in STAGES].index(kv[0])))


def rerun(command: list[str], root: Path, env: dict[str, str], name: str) -> Timing:
    timing = timed(command, cwd=root / "home", env=env, log=root / f"{name}.log")
    cached = statuses((root / f"{name}.log").read_text())
    if cached != {s.id: "cached" for s in STAGES}:
        raise SystemExit(f"{name}: expected every stage cached, got {cached}")
    return timing


def python_baseline(env: dict[str, str], cwd: Path, runs: int = 5) -> float:
    """Median wall seconds of `python -c pass`: the floor of any Python command at this moment."""
    samples = []
    for _ in range(runs + 1):  # the first is a warm-up
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], cwd=cwd, env=env, check=True)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples[1:])


def repetition(root: Path, size: list[str]) -> Repetition:
    env = dict(environment(root), PYTHONPATH=str(PROJECT))
    (root / "home").mkdir(parents=True)
    command = [sys.executable, "-m", "flows.nano3", *size]
    flow = timed(command, cwd=root / "home", env=env, log=root / "flow.log")
    ran = statuses((root / "flow.log").read_text())
    if ran != {s.id: "ran" for s in STAGES}:
        raise SystemExit(f"first run: expected every stage to run, got {ran}")
    before = submissions(root)
    baseline = [python_baseline(env, root / "home")]
    again = rerun(command, root, env, "rerun")
    with prefect_server(root / "home" / ".prefect") as api_url:
        baseline.append(python_baseline(env, root / "home"))
        again_server = rerun(command, root, dict(env, PREFECT_API_URL=api_url), "rerun-server")
    stop_local_servers(root / "home" / ".prefect")
    new = len(submissions(root) - before)
    return Repetition(flow, again, again_server, run_bare(root, env), new, statistics.median(baseline))


def spread(values: list[float], digits: int = 1) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))


def report(reps: list[Repetition], size: str) -> str:
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"size `{size}`; {len(reps)} repetitions; load average at the end {os.getloadavg()[0]:.1f}.",
        "",
        "| measure | wall: min / median / max | CPU s: min / median / max | goal |",
        "|---|---|---|---|",
        f"| T_flow: `python -m flows.nano3` from a clean state (s) | {spread([r.flow.wall for r in reps])} "
        f"| {spread([r.flow.cpu for r in reps])} | |",
        f"| T_bare: the eight recipe scripts run bare, summed (s) | {spread([r.bare_total for r in reps])} "
        f"| {spread([r.bare_cpu for r in reps])} | |",
        f"| **P2** T_flow / T_bare | {spread([r.overhead_ratio for r in reps], 3)} "
        f"| {spread([r.cpu_ratio for r in reps], 3)} | ≤ 1.10 |",
        f"| **P3** rerun, the local server the first run started (s) | {spread([r.rerun.wall for r in reps])} "
        f"| {spread([r.rerun.cpu for r in reps])} | ≤ 5 s |",
        f"| **P3** rerun, running Prefect server (s) | {spread([r.rerun_server.wall for r in reps])} "
        f"| {spread([r.rerun_server.cpu for r in reps])} | ≤ 5 s |",
        f"| `python -c pass`, beside the reruns (s) | {spread([r.baseline for r in reps], 3)} | | |",
        f"| **P3** rerun, local server / `python -c pass` | "
        f"{spread([r.rerun.wall / r.baseline for r in reps], 0)}× | | ≤ 300× |",
        f"| **P3** rerun, running server / `python -c pass` | "
        f"{spread([r.rerun_server.wall / r.baseline for r in reps], 0)}× | | ≤ 300× |",
        f"| submissions made by the reruns | {sum(r.rerun_submissions for r in reps)} | | 0 |",
        "",
        "| stage | bare script, median wall (s) |",
        "|---|---|",
    ]
    for stage in reps[0].bare:
        lines.append(f"| {stage} | {statistics.median(r.bare[stage].wall for r in reps):.1f} |")
    return "\n".join(lines)


def rerun_rounds(root: Path, size: list[str], checkouts: dict[str, Path], runs: int) -> str:
    """P3 only: each checkout's reruns, interleaved, on the finished run under `root`."""
    env = environment(root)
    command = [sys.executable, "-m", "flows.nano3", *size]
    before = submissions(root)
    times: dict[tuple[str, str], list[Timing]] = {}
    baselines = []
    home = root / "home" / ".prefect"
    with prefect_server(home) as api_url:
        # No server configured: Prefect's temporary server per command, the local server started by
        # the command (none running before it), the local server an earlier command left running.
        servers = {
            "temporary server per command": (dict(env, NANO3_LOCAL_SERVER_IDLE_MINUTES="0"), False),
            "local server, started": (env, True),
            "local server, running": (env, False),
            "configured server": (dict(env, PREFECT_API_URL=api_url), False),
        }
        try:
            for i, checkout in enumerate(checkouts.values()):  # warm-up: bytecode, page cache
                rerun(command, root, dict(env, PYTHONPATH=str(checkout)), f"warm-{i}")
            for n in range(runs):
                baselines.append(python_baseline(env, root / "home"))
                for i, (name, checkout) in enumerate(checkouts.items()):
                    for server, (server_env, fresh) in servers.items():
                        if fresh:
                            stop_local_servers(home)
                        log = f"rerun-{i}-{n}-" + "-".join(server.replace(",", "").split()[:2])
                        timing = rerun(command, root, dict(server_env, PYTHONPATH=str(checkout)), log)
                        times.setdefault((name, server), []).append(timing)
        finally:
            stop_local_servers(home)
    baseline = statistics.median(baselines)
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{runs} repetitions, interleaved; load average at the end {os.getloadavg()[0]:.1f}; "
        f"`python -c pass` {spread(baselines, 3)} s (min / median / max of the medians of 5).",
        "",
        "| code | Prefect server | wall (s): min / median / max | CPU (s) | median / `python -c pass` | goal |",
        "|---|---|---|---|---|---|",
    ]
    for (name, server), samples in times.items():
        walls = [t.wall for t in samples]
        lines.append(f"| {name} | {server} | {spread(walls)} | {spread([t.cpu for t in samples])} | "
                     f"{statistics.median(walls) / baseline:.0f}× | ≤ 5 s, ≤ 300× |")
    lines.append(f"\nsubmissions made by the reruns: {len(submissions(root) - before)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions (at least 3 for the record)")
    parser.add_argument("--size", choices=sorted(SIZES), default="ci")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders")
    parser.add_argument("--reruns", type=Path, metavar="ROOT", help="time only the reruns of the finished run under ROOT")
    parser.add_argument("--against", type=Path, metavar="CHECKOUT", help="with --reruns: also another checkout's reruns")
    args = parser.parse_args()
    if args.against is not None and args.reruns is None:
        parser.error("--against compares reruns: give --reruns ROOT")
    compile_bytecode()
    if args.reruns is not None:
        if not (args.reruns / "store" / "_runs").is_dir():
            parser.error(f"--reruns {args.reruns}: no finished run there (no store/_runs); keep one with --keep")
        checkouts = {"this checkout": PROJECT}
        if args.against is not None:
            checkouts[f"{args.against.resolve().name}"] = args.against.resolve()
        print(rerun_rounds(args.reruns, SIZES[args.size], checkouts, args.runs))
        return
    reps = []
    for n in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix=f"nano3-bench-{n}-"))
        try:
            rep = repetition(root, SIZES[args.size])
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        print(f"run {n + 1}: flow {rep.flow.wall:.1f} s, bare {rep.bare_total:.1f} s ({rep.overhead_ratio:.3f}; "
              f"CPU {rep.cpu_ratio:.3f}), rerun {rep.rerun.wall:.1f} s ({rep.rerun.wall / rep.baseline:.0f}×), "
              f"with a server {rep.rerun_server.wall:.1f} s ({rep.rerun_server.wall / rep.baseline:.0f}×), "
              f"{rep.rerun_submissions} submissions", flush=True)
        reps.append(rep)
    print(report(reps, args.size))


if __name__ == "__main__":
    main()

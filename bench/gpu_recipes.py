"""The training recipes on one GPU: correctness and throughput (docs/performance.md, "GPU").

    python3 bench/gpu_recipes.py --wheels bench/wheels --out $OUT      # on a CUDA machine
    .venv/bin/python bench/gpu_recipes.py --cpu-smoke --out /tmp/smoke # the same steps, tiny, on CPU

Runs the pipeline's own recipe scripts, each as the local executor runs a one-process job
(`python <script> --config <resolved.yaml>`, this checkout on PYTHONPATH, the hub offline), with
configs resolved the way the orchestrator resolves them:

1. peak: the bf16 matrix-product rate of this card (8192³, random data; MFU is measured against it)
2. data prep (pretrain, then SFT): .bin/.idx + tokenizer, chat JSONL
3. megatron: bench/megatron_gpt_loop.py, megatron-core GPT (local spec) at the 0.5B shape
4. pretrain 0.5B: recipes/nano3/pretrain/train.py with config gpu_0p5b (bf16)
5. pretrain tiny + resume: the tiny config in two jobs on one work dir; the second resumes
   from the first one's GPU checkpoint
6. CPU reload: a process without CUDA loads the GPU checkpoint and the model folder
7. SFT tiny, 8. eval tiny: on the tiny pretrained model, precision bf16

The only config changes are the device's (`precision: bf16`) and, for the resume check, the first
job's `train_iters`. Prints a table (tokens/s, MFU for both training paths) and writes
`results.json` under `--out` after every step, so a run cut short still reports what it did.
`--wheels DIR` first installs DIR/*.whl (bench/build_wheels.py) into a folder put on the path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
BENCH = PROJECT / "bench"
RECIPES = PROJECT / "recipes" / "nano3"
SCRIPTS = {
    "data_prep/pretrain": RECIPES / "data_prep/pretrain/prep.py",
    "data_prep/sft": RECIPES / "data_prep/sft/prep.py",
    "pretrain": RECIPES / "pretrain/train.py",
    "sft": RECIPES / "sft/train.py",
    "eval": RECIPES / "eval/evaluate.py",
}
PROGRESS_PREFIX = "NANO3_PROGRESS "
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

#: What changes between the GPU run and the CPU smoke run (same steps, same code).
# The recipes run without the orchestrator here: the pretraining corpus comes straight from the
# offline docstrings (`corpus.source: python_docstrings`), not from a snapshotted folder of shards.
PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {
        "data_prep/pretrain": {"corpus.source": "python_docstrings", "corpus.max_bytes": 5_000_000},
        "data_prep/sft": {},
        "megatron": ["--shape", "0p5b", "--seq-length", "2048", "--micro-batch-size", "8", "--steps", "30",
                     "--warmup", "5"],
        "pretrain_0p5b": {"train.train_iters": 30, "train.log_interval": 5, "train.save_interval": 30,
                          "train.eval_interval": 30},
        "pretrain_tiny": {"train.precision": "bf16"},
        "sft": {"train.precision": "bf16"},
        "eval": {"precision": "bf16"},
        "peak_n": 8192,
        "timeout": 300,
    },
    "cpu": {
        "data_prep/pretrain": {"corpus.source": "python_docstrings", "corpus.max_bytes": 300_000, "tokenizer.vocab_size": 1024, "split.valid_fraction": 0.05},
        "data_prep/sft": {"examples": 400, "held_out": 20},
        "megatron": ["--shape", "tiny", "--seq-length", "64", "--micro-batch-size", "4", "--steps", "8",
                     "--warmup", "2"],
        # The same config file and code, at the tiny model's shape and a few short steps.
        "pretrain_0p5b": {"train.train_iters": 6, "train.log_interval": 2, "train.save_interval": 6,
                          "train.eval_interval": 6, "train.seq_length": 64, "train.micro_batch_size": 4,
                          "train.mamba_chunk_size": 16, "train.eval_iters": 1, "train.lr": 2.0e-3},
        "pretrain_tiny": {"train.train_iters": 8, "train.log_interval": 2, "train.save_interval": 4,
                          "train.eval_interval": 8, "train.seq_length": 64, "train.eval_iters": 1},
        "sft": {"train.train_iters": 2, "train.log_interval": 1, "train.save_interval": 2,
                "train.eval_interval": 2, "train.micro_batch_size": 8},
        "eval": {"limit": 4, "batch_size": 4},
        "peak_n": 512,
        "timeout": 300,
    },
}
#: The CPU smoke run trains the 0.5B config at the tiny config's model shape.
TINY_MODEL_FOR_SMOKE = RECIPES / "pretrain/config/tiny.yaml"


class Bench:
    def __init__(self, out: Path, work: Path, profile: str, env: Mapping[str, str]) -> None:
        self.out, self.work, self.profile, self.env = out, work, PROFILES[profile], dict(env)
        self.results: dict[str, Any] = {"profile": profile, "steps": {}}
        self.failed: list[str] = []
        #: perf_counter time after which no step starts (and jobs are cut off), or None.
        self.deadline: float | None = None

    def timeout(self) -> int:
        """A job's time limit: the profile's, or what is left before the deadline (at least 10 s)."""
        limit = int(self.profile["timeout"])
        if self.deadline is not None:
            limit = min(limit, max(10, int(self.deadline - time.perf_counter())))
        return limit

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        print(f"\n=== {name}", flush=True)
        started = time.perf_counter()
        if self.deadline is not None and started > self.deadline:
            print(f"=== {name}: skipped (past --budget-s)", flush=True)
            self.results["steps"][name] = {"ok": False, "skipped": "past --budget-s"}
            self.failed.append(name)
            self.save()
            return None
        try:
            result = fn()
            result["ok"] = result.get("ok", True)
        except Exception as error:  # noqa: BLE001 - report it and carry on with the next step
            traceback.print_exc()
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"[-2000:]}
        result["seconds"] = round(time.perf_counter() - started, 1)
        if not result["ok"]:
            self.failed.append(name)
        print(f"=== {name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s) "
              f"{json.dumps({k: v for k, v in result.items() if k not in ('ok', 'seconds', 'log_tail')})[:600]}",
              flush=True)
        self.results["steps"][name] = result
        self.save()
        return result if result["ok"] else None

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        os.replace(tmp, self.out / "results.json")

    # --- running recipes as the local executor does ------------------------------------------------

    def config(self, stage: str, base: Path, name: str, inputs: Mapping[str, tuple[Path, str]] | None = None,
               overrides: Mapping[str, Any] | None = None, work: Path | None = None) -> Path:
        return write_resolved_config(self.work / name / "config.yaml", stage, base, self.work / name / "output",
                                     work or self.work / name / "work", inputs, overrides)

    def run(self, stage: str, config: Path, log_name: str, env: Mapping[str, str] | None = None,
            script: Path | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, str(script or SCRIPTS[stage]), "--config", str(config)]
        return run_logged(command, {**self.env, **(env or {})}, self.out / f"{log_name}.log", self.timeout())


def write_resolved_config(path: Path, stage: str, base: Path, output_dir: Path, work_dir: Path,
                          inputs: Mapping[str, tuple[Path, str]] | None = None,
                          overrides: Mapping[str, Any] | None = None) -> Path:
    """The stage's YAML plus the `run` block the orchestrator resolves (dotted override keys)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(base)
    cfg.run = OmegaConf.merge(cfg.get("run") or {}, {
        "stage": stage, "output_dir": str(output_dir), "work_dir": str(work_dir),
        "seed": int(cfg.get("seed", 1234)),
        "inputs": {name: {"name": f"bench-{name}", "version": "v1", "digest": "sha256:bench", "type": kind,
                          "path": str(folder)} for name, (folder, kind) in (inputs or {}).items()},
    })
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path)
    return path


def run_logged(command: list[str], env: Mapping[str, str], log: Path, timeout: int) -> subprocess.CompletedProcess:
    """Run, append the whole output to `jobs.log` beside `log` under a `### <log name>` heading (one
    file: the GPU machine sends back few files), fail with the output's tail if the command fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=PROJECT, env=dict(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        output = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout or ""
        _append_log(log, command, output, f"timed out after {timeout} s")
        raise RuntimeError(f"{' '.join(command[1:3])} timed out after {timeout} s:\n{output[-3000:]}") from None
    _append_log(log, command, result.stdout, f"exit {result.returncode}, {time.perf_counter() - started:.0f} s")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:3])} exited {result.returncode}:\n{result.stdout[-3000:]}")
    return result


def _append_log(log: Path, command: list[str], output: str, status: str) -> None:
    with (log.parent / "jobs.log").open("a") as handle:
        handle.write(f"\n### {log.stem}: {' '.join(command)} ({status})\n{output}")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise RuntimeError(f"no manifest.json in {folder}: the stage did not finish")
    return json.loads(path.read_text())


def progress_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line[len(PROGRESS_PREFIX):]) for line in stdout.splitlines() if line.startswith(PROGRESS_PREFIX)]


def steady_tokens_per_s(lines: list[dict[str, Any]], tokens_per_step: int) -> float | None:
    """Tokens/s between the first and the last progress line: the first interval (CUDA and
    allocator warm-up) and the evaluation before step 1 are left out; no evaluation or checkpoint
    falls between them when eval/save intervals are the run's length."""
    if len(lines) < 2 or lines[-1]["time"] <= lines[0]["time"]:
        return None
    return (lines[-1]["step"] - lines[0]["step"]) * tokens_per_step / (lines[-1]["time"] - lines[0]["time"])


def vocab_size(tokenizer_dir: Path) -> int:
    """len(tokenizer), as the recipes size the embedding, from tokenizer.json alone."""
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    ids = set(data["model"]["vocab"].values()) | {int(t["id"]) for t in data.get("added_tokens") or []}
    return max(ids) + 1


# --- the measurements -----------------------------------------------------------------------------


def measure_peak(n: int) -> dict[str, Any]:
    """The matrix-product rate: bf16 on CUDA (n³, random data, median of 10 after 3 warm-ups)."""
    import torch

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    pairs = [(torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype))
             for _ in range(2)]
    times = []
    for i in range(13):
        a, b = pairs[i % 2]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            started = time.perf_counter()
            a @ b
            seconds = time.perf_counter() - started
        if i >= 3:
            times.append(seconds)
    median = sorted(times)[len(times) // 2]
    check = (pairs[0][0][:64].double() @ pairs[0][1].double()[:, :64])
    got = (pairs[0][0][:64] @ pairs[0][1][:, :64]).double()
    rel = float((got - check).norm() / check.norm())
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "n": n, "median_s": median,
        "peak_flops": 2 * n**3 / median, "peak_tflops": round(2 * n**3 / median / 1e12, 1),
        "relative_error_vs_fp64": rel, "ok": rel < 1e-2,
        "torch": torch.__version__, "cuda": torch.version.cuda,
    }


def cpu_reload_check(work_dir: Path, model_dir: Path) -> dict[str, Any]:
    """In a process without CUDA: the GPU-written checkpoint and model folder load on CPU and agree."""
    import numpy as np
    import torch

    from recipes.nano3 import hf_model

    assert not torch.cuda.is_available(), "run with CUDA_VISIBLE_DEVICES= (the check is a CPU reload)"
    placement = hf_model.Placement(torch.device("cpu"), torch.float32)
    model, tokenizer = hf_model.load_model(model_dir, placement, chunk_size=16)
    fresh, _ = hf_model.load_model(model_dir, placement, chunk_size=16)
    optimizer, scheduler = hf_model.make_optimizer(fresh, {"lr": 1e-3, "train_iters": 1})
    state = hf_model.TrainingState(fresh, optimizer, scheduler, np.random.default_rng(0))
    if not hf_model.resume(work_dir, state):
        raise RuntimeError(f"no complete checkpoint under {work_dir}")
    worst = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    devices = {str(v.device) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)}
    ids = torch.tensor([tokenizer("def add(a, b):\n    return a + b").input_ids])
    with torch.inference_mode():
        loss = float(model(input_ids=ids, labels=ids).loss)
    ok = worst == 0.0 and devices <= {"cpu"} and np.isfinite(loss)
    return {"step": state.step, "max_abs_diff_checkpoint_vs_model": worst, "optimizer_devices": sorted(devices),
            "loss": loss, "ok": bool(ok)}


def table(results: Mapping[str, Any]) -> str:
    steps = results["steps"]
    peak = steps.get("peak") or {}
    rows = ["| path | card | shape | parameters | tokens/s | model TFLOP/s | MFU | loss first → last |",
            "|---|---|---|---|---|---|---|---|"]
    for key in ("megatron", "pretrain_0p5b"):
        r = steps.get(key) or {}
        if not r.get("ok"):
            rows.append(f"| {key} | | | | failed | | | |")
            continue
        tps, fpt = r.get("tokens_per_s"), r.get("flops_per_token")
        tflops = tps * fpt / 1e12 if tps and fpt else None
        rows.append(
            f"| {r['path']} | {peak.get('device', '?')} | {r['shape']} | {r['parameters'] / 1e6:.0f}M | "
            f"{tps:,.0f} | {tflops:.1f} | {r['mfu']:.1%} | {r['loss_first']:.3f} → {r['loss_last']:.3f} |"
            if tps and tflops is not None and r.get("mfu") is not None else f"| {key} | | | | n/a | | | |"
        )
    rows.append(f"\nmeasured peak: {peak.get('peak_tflops', '?')} TFLOP/s ({peak.get('dtype', '?')} "
                f"{peak.get('n', '?')}³ matrix product, {peak.get('device', '?')})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="results.json, the table and every job's log")
    parser.add_argument("--work", type=Path, help="data, checkpoints and outputs (default: a folder under /tmp)")
    parser.add_argument("--cpu-smoke", action="store_true", help="the same steps at tiny sizes, on CPU")
    parser.add_argument("--wheels", type=Path, help="install these wheels (--no-deps) before anything else")
    parser.add_argument("--site", type=Path, default=Path("/tmp/nano3-site"), help="where --wheels installs")
    parser.add_argument("--budget-s", type=float, help="start no step after this many seconds; cut jobs off there")
    parser.add_argument("--skip", nargs="*", default=[], help="steps to leave out (megatron, pretrain_0p5b, ...)")
    parser.add_argument("--cpu-reload-check", nargs=2, type=Path, metavar=("WORK_DIR", "MODEL_DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.cpu_reload_check:
        sys.path.insert(0, str(PROJECT))
        print(json.dumps(cpu_reload_check(*args.cpu_reload_check)), flush=True)
        return 0

    env = dict(os.environ)
    path = [str(PROJECT)]
    if args.wheels:
        install_wheels(args.wheels, args.site)
        path.append(str(args.site))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*path, env.get("PYTHONPATH")]))
    env.update(OFFLINE)
    env["PYTHONUNBUFFERED"] = "1"
    for entry in reversed(path):
        sys.path.insert(0, entry)

    import torch

    profile = "cpu" if args.cpu_smoke else "gpu"
    if profile == "gpu" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device (use --cpu-smoke on a machine without one)")
    work = args.work or Path("/tmp") / f"nano3-gpu-bench-{os.getpid()}"
    bench = Bench(args.out, work, profile, env)
    if args.budget_s:
        bench.deadline = time.perf_counter() + args.budget_s
    p = bench.profile
    bench.results["environment"] = environment()
    print(json.dumps(bench.results["environment"]), flush=True)

    bench.step("peak", lambda: measure_peak(int(p["peak_n"])))
    peak = (bench.results["steps"]["peak"] or {}).get("peak_flops")

    def data_prep(stage: str) -> Path:
        config = bench.config(stage, RECIPES / stage / "config/tiny.yaml", stage.replace("/", "_"),
                              overrides=p[stage])
        bench.run(stage, config, stage.replace("/", "_"))
        read_manifest(config.parent / "output")
        return config.parent / "output"

    pretrain_data = work / "data_prep_pretrain" / "output"
    sft_data = work / "data_prep_sft" / "output"
    bench.step("data_prep_pretrain", lambda: {"output": str(data_prep("data_prep/pretrain"))})
    bench.step("data_prep_sft", lambda: {"output": str(data_prep("data_prep/sft"))})

    def megatron() -> dict[str, Any]:
        from bench import flops

        out = args.out / "megatron.json"
        run_logged([sys.executable, str(BENCH / "megatron_gpt_loop.py"), "--data", str(pretrain_data),
                    *p["megatron"], "--out", str(out)], env, args.out / "megatron.log", bench.timeout())
        r = json.loads(out.read_text())
        count = flops.gpt(r["model"], r["vocab_size"], r["seq_length"])
        r["flops_per_token"] = count.flops_per_token
        r["mfu"] = flops.mfu(r["tokens_per_s"], count.flops_per_token, peak) if peak and r["tokens_per_s"] else None
        learned = r["seq_length"] * r["model"]["hidden_size"] if r["model"]["position_embedding"] != "rope" else 0
        r["parameters_counted"] = count.total_params + learned
        r["ok"] = r["loss_last"] < r["loss_first"] and r["parameters_counted"] == r["parameters"]
        return r

    def pretrain_0p5b() -> dict[str, Any]:
        from omegaconf import OmegaConf

        from bench import flops

        overrides = dict(p["pretrain_0p5b"])
        if profile == "cpu":
            overrides["model"] = OmegaConf.to_container(OmegaConf.load(TINY_MODEL_FOR_SMOKE).model)
        config = bench.config("pretrain", RECIPES / "pretrain/config/gpu_0p5b.yaml", "pretrain_0p5b",
                              {"data": (pretrain_data, "binidx")}, overrides)
        result = bench.run("pretrain", config, "pretrain_0p5b")
        manifest = read_manifest(config.parent / "output")
        cfg = OmegaConf.load(config)
        seq, batch = int(cfg.train.seq_length), int(cfg.train.micro_batch_size)
        lines = progress_lines(result.stdout)
        tps = steady_tokens_per_s(lines, seq * batch)
        count = flops.nemotron_h(OmegaConf.to_container(cfg.model, resolve=True), vocab_size(pretrain_data / "tokenizer"),
                                 seq, int(cfg.train.mamba_chunk_size))
        m = manifest["metrics"]
        return {
            "path": "hf NemotronH (pretrain recipe)", "shape": "0p5b" if profile == "gpu" else "tiny",
            "parameters": manifest["metadata"]["parameters"], "parameters_counted": count.total_params,
            "device": manifest["metadata"]["device"], "seq_length": seq, "micro_batch_size": batch,
            "tokens_per_s": tps, "tokens_per_s_recipe": m.get("tokens_per_s"),
            "flops_per_token": count.flops_per_token,
            "mfu": flops.mfu(tps, count.flops_per_token, peak) if tps and peak else None,
            "loss_first": lines[0]["loss"], "loss_last": lines[-1]["loss"],
            "valid_loss_start": m["valid_loss_start"], "valid_loss": m["valid_loss"],
            "ok": m["valid_loss"] < m["valid_loss_start"] and count.total_params == manifest["metadata"]["parameters"],
        }

    tiny_work = work / "pretrain_tiny" / "work"

    def pretrain_tiny_resume() -> dict[str, Any]:
        from omegaconf import OmegaConf

        base = RECIPES / "pretrain/config/tiny.yaml"
        total = int(p["pretrain_tiny"].get("train.train_iters", OmegaConf.load(base).train.train_iters))
        first = {**p["pretrain_tiny"], "train.train_iters": total // 2, "train.save_interval": total // 2}
        config = bench.config("pretrain", base, "pretrain_tiny_first", {"data": (pretrain_data, "binidx")}, first,
                              work=tiny_work)
        bench.run("pretrain", config, "pretrain_tiny_first")
        config = bench.config("pretrain", base, "pretrain_tiny", {"data": (pretrain_data, "binidx")},
                              p["pretrain_tiny"], work=tiny_work)
        result = bench.run("pretrain", config, "pretrain_tiny")
        manifest = read_manifest(config.parent / "output")
        resumed = f"resumed from step {total // 2}" in result.stdout
        return {"resumed": resumed, "steps": manifest["metrics"]["steps"], "device": manifest["metadata"]["device"],
                "valid_loss_start": manifest["metrics"]["valid_loss_start"],
                "valid_loss": manifest["metrics"]["valid_loss"],
                "ok": resumed and manifest["metrics"]["steps"] == total
                and manifest["metrics"]["valid_loss"] < manifest["metrics"]["valid_loss_start"]}

    def cpu_reload() -> dict[str, Any]:
        result = run_logged([sys.executable, str(Path(__file__).resolve()), "--out", str(args.out),
                             "--cpu-reload-check", str(tiny_work), str(work / "pretrain_tiny" / "output")],
                            {**env, "CUDA_VISIBLE_DEVICES": ""}, args.out / "cpu_reload.log", bench.timeout())
        return json.loads(result.stdout.strip().splitlines()[-1])

    def sft() -> dict[str, Any]:
        config = bench.config("sft", RECIPES / "sft/config/tiny.yaml", "sft",
                              {"data": (sft_data, "training_jsonl"),
                               "model": (work / "pretrain_tiny" / "output", "checkpoint_hf"),
                               "corpus": (pretrain_data, "binidx")}, p["sft"])
        bench.run("sft", config, "sft")
        m = read_manifest(config.parent / "output")
        scores = ("exact_match_number_start", "exact_match_number", "exact_match", "text_loss", "train_loss", "tokens_per_s")
        return {**{k: m["metrics"].get(k) for k in scores}, "device": m["metadata"]["device"],
                "ok": profile == "cpu" or m["metrics"]["exact_match_number"] > m["metrics"]["exact_match_number_start"]}

    def evaluate() -> dict[str, Any]:
        config = bench.config("eval", RECIPES / "eval/config/tiny.yaml", "eval",
                              {"model": (work / "sft" / "output", "checkpoint_hf"),
                               "baseline": (work / "pretrain_tiny" / "output", "checkpoint_hf"),
                               "data": (sft_data, "training_jsonl"), "corpus": (pretrain_data, "binidx")},
                              p["eval"])
        bench.run("eval", config, "eval")
        m = read_manifest(config.parent / "output")["metrics"]
        return {**m, "ok": profile == "cpu" or m.get("exact_match_number", 0) > m.get("baseline_exact_match_number", 0)}

    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("megatron", megatron), ("pretrain_0p5b", pretrain_0p5b), ("pretrain_tiny_resume", pretrain_tiny_resume),
        ("cpu_reload", cpu_reload), ("sft", sft), ("eval", evaluate),
    ]
    for name, fn in steps:
        if name not in args.skip:
            bench.step(name, fn)

    text = table(bench.results)
    (args.out / "table.md").write_text(text + "\n")
    bench.results["failed"] = bench.failed
    bench.save()
    print("\n" + text)
    print(f"\nsteps failed: {', '.join(bench.failed) or 'none'}; results: {args.out / 'results.json'}", flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bench.failed else 0


def install_wheels(folder: Path, target: Path) -> None:
    wheels = sorted(str(w) for w in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"error: no wheels in {folder}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *wheels], check=True)
    print(f"installed {len(wheels)} wheels into {target} in {time.perf_counter() - started:.0f} s", flush=True)


def environment() -> dict[str, Any]:
    import importlib.metadata as metadata

    versions = {}
    for name in ("torch", "transformers", "megatron-core", "trl", "lm_eval", "tokenizers", "accelerate", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import torch

    return {"python": sys.version.split()[0], "packages": versions,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


if __name__ == "__main__":
    sys.exit(main())

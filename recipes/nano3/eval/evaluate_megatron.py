# /// script
# requires-python = ">=3.10"
# [tool.runspec]
# name = "nano3/eval/megatron"
# image = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
# launch = "direct"
# ///
"""Evaluate the HF export on GPU nodes (backend megatron): lm-eval on vLLM, or NeMo-Evaluator.

`engine: lm-eval` (default) runs lm-eval with its vLLM model over the node's GPUs (tensor
parallel), on the hub benchmarks named in `tasks` and the nano3 tasks shipped with the hf
backend's eval (their data comes from the `data` and `corpus` inputs). `engine: nemo-evaluator`
serves the export with vLLM's OpenAI-compatible server and runs NeMo-Evaluator's benchmarks
against it (`evaluator.tasks`). Both write results.json and an eval_results manifest whose
metrics match the hf backend's names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from recipes.nano3 import megatron_support as mb
from recipes.nano3 import runtime
from recipes.nano3.eval.evaluate import OFFLINE_ENV, headline_metrics, metric_values, resolve_local_tasks


def gpus() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def lm_eval_results(ctx: runtime.RecipeContext, model: Path) -> dict[str, dict[str, float]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = [str(t) for t in ctx.config.tasks]
    folders = {name: ctx.input_path(name) for name in ctx.inputs}
    local = resolve_local_tasks(tasks, folders, ctx.work_dir / "tasks")
    manager = TaskManager(include_path=str(ctx.work_dir / "tasks"), include_defaults=len(local) < len(tasks))
    output = lm_eval.simple_evaluate(
        model="vllm",
        model_args={
            "pretrained": str(model),
            "tensor_parallel_size": gpus(),
            "dtype": "bfloat16",
            "gpu_memory_utilization": float(ctx.config.get("gpu_memory_utilization", 0.8)),
            "trust_remote_code": True,
        },
        tasks=tasks,
        task_manager=manager,
        batch_size="auto",
        limit=ctx.config.get("limit"),
        apply_chat_template=bool(ctx.config.get("apply_chat_template", True)),
        bootstrap_iters=int(ctx.config.get("bootstrap_iters", 0)),
        log_samples=False,
        random_seed=ctx.seed,
        numpy_random_seed=ctx.seed,
        torch_random_seed=ctx.seed,
    )
    return {task: metric_values(values) for task, values in output["results"].items()}


def serve(model: Path, port: int) -> subprocess.Popen:
    """vLLM's OpenAI-compatible server on this node; returns once it answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--port", str(port),
         "--served-model-name", "nano3", "--tensor-parallel-size", str(gpus()), "--trust-remote-code"]
    )
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: the vLLM server exited with {server.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return server
        except OSError:
            time.sleep(10)
    server.kill()
    raise SystemExit("error: the vLLM server did not start within 30 minutes")


def nemo_evaluator_results(ctx: runtime.RecipeContext, model: Path) -> dict[str, dict[str, float]]:
    from nemo_evaluator.api import evaluate
    from nemo_evaluator.api.api_dataclasses import ApiEndpoint, ConfigParams, EvaluationConfig, EvaluationTarget

    evaluator = ctx.config.evaluator
    port = int(evaluator.get("port", 8000))
    server = serve(model, port)
    results: dict[str, dict[str, float]] = {}
    try:
        target = EvaluationTarget(
            api_endpoint=ApiEndpoint(url=f"http://127.0.0.1:{port}/v1/chat/completions", type="chat", model_id="nano3")
        )
        for task in evaluator.tasks:
            params = ConfigParams(limit_samples=ctx.config.get("limit"), parallelism=int(evaluator.get("parallelism", 16)))
            out = evaluate(
                target_cfg=target,
                eval_cfg=EvaluationConfig(type=str(task), output_dir=str(ctx.work_dir / "nemo_evaluator" / str(task)), params=params),
            )
            for name, task_result in (out.tasks or {}).items():
                results[name] = {m: round(float(r.scores[s].value), 6) for m, r in task_result.metrics.items() for s in r.scores}
    finally:
        server.terminate()
    return results


#: engine → (modules it imports, what to tell a user who lacks them). NeMo-Evaluator's
#: `nemo_evaluator.api` (evaluate, api_dataclasses) is the 25.11-era core package's API; its 0.3+
#: releases replaced it, which the check reports as missing rather than failing mid-import.
ENGINES = {
    "lm-eval": (("lm_eval", "vllm"), "lm-eval and vLLM"),
    "nemo-evaluator": (("nemo_evaluator.api", "vllm"), "NeMo-Evaluator (the nemo_evaluator.api of its 25.11-era releases) and vLLM"),
}


def main() -> None:
    ctx_engine = None
    if "--config" in sys.argv:  # which libraries to require depends on the engine; checked before anything heavy
        from omegaconf import OmegaConf

        path = Path(sys.argv[sys.argv.index("--config") + 1])
        ctx_engine = str(OmegaConf.load(path).get("engine", "lm-eval")) if path.is_file() else None
    modules, needs = ENGINES.get(ctx_engine or "lm-eval", ENGINES["lm-eval"])
    mb.require(*modules, needs=needs, container=mb.NEMO_CONTAINER)
    ctx = runtime.start()
    model = ctx.input_path("model")
    if not (model / "config.json").is_file():
        raise SystemExit(f"error: input 'model' at {model} has no config.json: expected a checkpoint_hf artifact")
    if ctx.config.get("offline", False):
        os.environ.update(OFFLINE_ENV)
    engine = str(ctx.config.get("engine", "lm-eval"))
    if engine not in ENGINES:
        raise SystemExit(f"error: engine {engine!r}: expected one of {', '.join(ENGINES)}")
    print(f"evaluating {model} with {engine}", flush=True)
    results: dict[str, Any] = {"model": lm_eval_results(ctx, model) if engine == "lm-eval" else nemo_evaluator_results(ctx, model)}
    runtime.progress(1, 1)
    (ctx.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    runtime.finish(ctx, "eval_results", metrics=headline_metrics(results), metadata={"engine": engine, "evaluated": ["model"]})


if __name__ == "__main__":
    main()

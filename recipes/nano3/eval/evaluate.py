# /// script
# requires-python = ">=3.11"
# [tool.runspec]
# name = "nano3/eval"
# launch = "direct"
# ///
"""Evaluate the exported model and the pretrained baseline with lm-eval on the same tasks (backend hf).

The nano3 tasks are lm-eval YAMLs shipped next to this script (tasks/): their data files are
named relative to this stage's inputs (`${data}`, `${corpus}`), so the script writes copies with
the input folders filled in and hands lm-eval only those. With `offline` set, the Hugging Face
libraries are told so before they are imported: a task that would need the hub fails instead of
downloading. Both models answer the same prompts, so `improvement_exact_match` is what training
bought over the pretrained model. Where the orchestrator passes the model in service (input
`production`), it answers them too: its `production_*` metrics are what the promotion gate
compares the candidate with, on the same data.

Inputs `sft` and `rl`, where given, are the run's other checkpoints: every checkpoint answers the
same tasks, and the manifest's report is the ladder (pretrained → SFT → RL → export), one row per
checkpoint, with two charts drawn from it: each checkpoint's scores, and each training stage's
loss curve (the train_history.json its model folder holds).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipes.nano3 import runtime
from recipes.nano3.manifest import Report

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_FILES = ("config.json", "tokenizer_config.json")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
#: Reported at the top level of the manifest's metrics, from the first task that has them.
HEADLINE = ("exact_match", "exact_match_number", "word_perplexity", "bits_per_byte")
#: The run's checkpoints in training order (input name → the ladder's name for it); the
#: model in service comes last, for comparison.
LADDER = {"baseline": "pretrained", "sft": "sft", "rl": "rl", "model": "export", "production": "in service"}


def models_to_evaluate(ctx: runtime.RecipeContext) -> list[str]:
    """The input names to evaluate, checked before the slow imports."""
    backend = ctx.config.run.get("backend", "hf")
    if backend != "hf":
        raise SystemExit(f"error: this script is the hf backend; run.backend is {backend!r}")
    names = ["model", "baseline"] if ctx.config.get("compare_baseline", True) else ["model"]
    names += [name for name in ("sft", "rl") if name in ctx.inputs]
    if "production" in ctx.inputs:
        names.append("production")
    for name in names:
        ctx.checked_input(name, MODEL_FILES, "checkpoint_hf")
    return names


def resolve_local_tasks(names: list[str], folders: Mapping[str, Path], dest: Path) -> list[str]:
    """Write the shipped YAMLs of the requested tasks into `dest`, `${input}` replaced by that input's folder.

    Returns the names that are local; the others are left for lm-eval's own task index.
    """
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    local = [name for name in names if (TASKS_DIR / f"{name}.yaml").is_file()]
    for name in local:
        template = string.Template((TASKS_DIR / f"{name}.yaml").read_text())
        unknown = sorted(set(template.get_identifiers()) - set(folders))
        if unknown:
            raise SystemExit(f"error: task {name} reads input '{unknown[0]}', which this run does not have")
        text = template.substitute({key: str(folder) for key, folder in folders.items()})
        for split, path in yaml.safe_load(text).get("dataset_kwargs", {}).get("data_files", {}).items():
            if not Path(path).is_file():
                raise SystemExit(f"error: task {name}: its {split} data {path} does not exist")
        (dest / f"{name}.yaml").write_text(text)
    return local


def metric_values(task_results: dict[str, Any]) -> dict[str, float]:
    """lm-eval keys metrics "name,filter": the filter is dropped where it is lm-eval's "none", and
    joined with `_` otherwise (exact_match_number: the number in the reply, whatever surrounds it)."""
    values = {}
    for key, value in task_results.items():
        if key == "alias" or not isinstance(value, int | float):
            continue
        metric, _, applied_filter = key.partition(",")
        values[metric if applied_filter in ("", "none") else f"{metric}_{applied_filter}"] = round(float(value), 6)
    return values


def evaluate(model_dir: Path, tasks: list[str], task_manager: Any, ctx: runtime.RecipeContext) -> dict[str, Any]:
    import lm_eval

    from recipes.nano3 import hf_model

    cfg = ctx.config
    placement = hf_model.choose_placement(str(cfg.get("precision", "fp32")))
    model_args: dict[str, Any] = {"pretrained": str(model_dir), "dtype": str(placement.dtype).removeprefix("torch.")}
    if cfg.get("mamba_chunk_size"):
        model_args["chunk_size"] = int(cfg.mamba_chunk_size)
    # lm-eval decodes replies without special tokens, so a reply must not run on past its end of turn.
    stops = sorted(hf_model.stop_token_ids(hf_model.load_tokenizer(model_dir)))
    output = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=tasks,
        task_manager=task_manager,
        batch_size=int(cfg.batch_size),
        device=placement.device.type,
        limit=cfg.get("limit"),
        apply_chat_template=bool(cfg.get("apply_chat_template", True)),
        gen_kwargs={"eos_token_id": stops},
        bootstrap_iters=int(cfg.get("bootstrap_iters", 0)),
        log_samples=False,
        random_seed=ctx.seed,
        numpy_random_seed=ctx.seed,
        torch_random_seed=ctx.seed,
    )
    return {task: metric_values(values) for task, values in output["results"].items()}


def headline(tasks: Mapping[str, Mapping[str, float]]) -> dict[str, float | None]:
    """One model's headline metrics, each from the first task that has it."""
    return {metric: next((values[metric] for values in tasks.values() if metric in values), None) for metric in HEADLINE}


def headline_metrics(results: dict[str, dict[str, dict[str, float]] | None]) -> dict[str, float]:
    """Each headline metric for every evaluated model, and how far the model moved exact match.

    results.json keeps every number; the manifest's metrics are what a run summary shows.
    """
    metrics: dict[str, float] = {}
    for side, tasks in results.items():
        if tasks is None:
            continue
        prefix = "" if side == "model" else f"{side}_"
        metrics.update({prefix + metric: value for metric, value in headline(tasks).items() if value is not None})
    if "exact_match" in metrics and "baseline_exact_match" in metrics:
        metrics["improvement_exact_match"] = round(metrics["exact_match"] - metrics["baseline_exact_match"], 6)
    return metrics


def ladder(ctx: runtime.RecipeContext, results: Mapping[str, dict[str, dict[str, float]] | None]) -> Report:
    """One row per evaluated checkpoint, in training order, and the charts drawn from them."""
    from recipes.nano3 import charts

    rows = []
    for name, label in LADDER.items():
        tasks = results.get(name)
        if tasks is None:
            continue
        ref = ctx.inputs[name]
        rows.append({"checkpoint": label, "artifact": f"{ref.name}:{ref.version}", **headline(tasks)})
    curves = {
        stage: json.loads(path.read_text())
        for name, stage in (("baseline", "pretrain"), ("sft", "sft"), ("rl", "rl"))
        if results.get(name) is not None and (path := ctx.input_path(name) / charts.HISTORY_FILE).is_file()
    }
    files = [charts.draw_ladder(rows, ctx.output_dir / "ladder.png")]
    if curves:
        files.append(charts.draw_loss_curves(curves, ctx.output_dir / "loss_curves.png"))
    return Report(
        title="Every checkpoint of the run on the same held-out tasks",
        columns=["checkpoint", "artifact", *HEADLINE],
        rows=rows,
        charts=[path.name for path in files],
    )


def main() -> None:
    ctx = runtime.start()
    names = models_to_evaluate(ctx)
    tasks = [str(task) for task in ctx.config.tasks]
    folders = {name: ctx.input_path(name) for name in ctx.inputs}
    local = resolve_local_tasks(tasks, folders, ctx.work_dir / "tasks")
    if ctx.config.get("offline", True):
        os.environ.update(OFFLINE_ENV)

    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(ctx.work_dir / "tasks"), include_defaults=len(local) < len(tasks))

    results: dict[str, dict[str, dict[str, float]] | None] = {"model": None, "baseline": None}
    for done, name in enumerate(names):
        print(f"evaluating input '{name}' ({ctx.input_path(name)}) on {tasks}", flush=True)
        results[name] = evaluate(ctx.input_path(name), tasks, task_manager, ctx)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
        runtime.progress(done + 1, len(names))

    (ctx.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    runtime.finish(
        ctx,
        "eval_results",
        metrics=headline_metrics(results),
        metadata={"tasks": tasks, "limit": ctx.config.get("limit"), "evaluated": names},
        report=ladder(ctx, results),
    )


if __name__ == "__main__":
    main()

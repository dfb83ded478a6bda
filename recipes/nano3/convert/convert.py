# /// script
# requires-python = ">=3.11"
# [tool.runspec]
# name = "nano3/convert"
# launch = "direct"
# ///
"""Export a checkpoint_hf artifact as the deployable model: weights in `dtype` (bf16) safetensors.

The export is written to run.work_dir first, then reloaded from disk and its logits compared with
the fp32 source's on seeded prompts. The reloaded weights are upcast to fp32 for that comparison:
it measures what the conversion changed (rounding, or a broken tensor mapping), not what bf16
arithmetic adds on one machine's kernels. Rounding alone moves a few logits of a small, sharply
trained model by whole units while the rest move by hundredths, so `check_logits` bounds the
mean change (`max_mean_abs_diff`) and the share of positions whose top token is unchanged
(`min_top1_agreement`), which a broken mapping fails by far; `max_abs_diff` bounds any one
position where the model's logits are not that sharp. Only an export that passes is moved into run.output_dir; a failed check exits
non-zero and leaves no artifact behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from recipes.nano3 import runtime

MODEL_FILES = ("config.json", "tokenizer_config.json")
#: The config's dtype → how safetensors headers name it.
DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def check_inputs(ctx: runtime.RecipeContext) -> None:
    """Fail before the slow imports, naming what is wrong."""
    backend = ctx.config.run.get("backend", "hf")
    if backend != "hf":
        raise SystemExit(f"error: this script is the hf backend; run.backend is {backend!r}")
    if str(ctx.config.dtype) not in DTYPES:
        raise SystemExit(f"error: dtype {ctx.config.dtype!r} is not one of {list(DTYPES)}")
    ctx.checked_input("model", MODEL_FILES, "checkpoint_hf")


def check_prompts(vocab_size: int, special_ids: list[int], count: int, length: int, seed: int) -> Any:
    """Seeded token ids from the ordinary vocabulary: any model, any tokenizer, the same prompts every run."""
    import torch

    ordinary = torch.tensor(sorted(set(range(vocab_size)) - set(special_ids)))
    generator = torch.Generator().manual_seed(seed)
    return ordinary[torch.randint(len(ordinary), (count, length), generator=generator)]


def stored_dtypes(folder: Path) -> set[str]:
    """Read from the safetensors headers: loading would upcast NemotronH's fp32-kept router weights."""
    from safetensors import safe_open

    dtypes = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as handle:
            dtypes |= {handle.get_slice(name).get_dtype() for name in handle.keys()}
    return dtypes


def logits(model: Any, prompts: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=prompts.to(model.device)).logits.float().cpu()


#: check_logits key → (metric it bounds, whether the metric must stay at or below it). Unset keys
#: are not checked. One position's logit is a noisy statistic on a sharply trained model (bf16
#: rounding alone moved one by 4.9, then by 9.1, on two seeds); the mean and the top token are not.
LIMITS = {
    "max_abs_diff": ("max_abs_logit_diff", True),
    "max_mean_abs_diff": ("mean_abs_logit_diff", True),
    "min_top1_agreement": ("top1_agreement", False),
}


def failed_checks(result: dict[str, float], check: Any) -> list[str]:
    failures = []
    for key, (metric, upper) in LIMITS.items():
        limit = check.get(key)
        if limit is None:
            continue
        if (result[metric] > float(limit)) if upper else (result[metric] < float(limit)):
            word = "exceeds" if upper else "is below"
            failures.append(f"{metric.replace('_', ' ')} {result[metric]} {word} check_logits.{key} {limit}")
    return failures


def compare(reference: Any, candidate: Any) -> dict[str, float]:
    diff = (candidate - reference).abs()
    return {
        "max_abs_logit_diff": round(diff.max().item(), 6),
        "mean_abs_logit_diff": round(diff.mean().item(), 6),
        "top1_agreement": round((candidate.argmax(-1) == reference.argmax(-1)).float().mean().item(), 4),
        "max_abs_logit": round(reference.abs().max().item(), 4),
    }


def fail(reason: str, staging: Path) -> None:
    raise SystemExit(f"error: {reason}; the export is left in {staging} and not published")


def publish(staging: Path, output_dir: Path) -> None:
    """Move the checked export into the artifact folder, file by file (same file system)."""
    for path in sorted(staging.iterdir()):
        os.replace(path, output_dir / path.name)


def main() -> None:
    ctx = runtime.start()
    check_inputs(ctx)

    import torch
    from transformers import AutoModelForCausalLM

    from recipes.nano3 import hf_model

    cfg, check = ctx.config, ctx.config.check_logits
    target = getattr(torch, str(cfg.dtype))
    placement = hf_model.choose_placement("fp32")
    source, tokenizer = hf_model.load_model(ctx.input_path("model"), placement)
    source.eval()
    prompts = check_prompts(
        source.config.vocab_size,
        tokenizer.all_special_ids,
        int(check.prompts),
        int(check.get("seq_len", 32)),
        ctx.seed,
    )
    reference = logits(source, prompts)

    staging = ctx.work_dir / "export"
    shutil.rmtree(staging, ignore_errors=True)
    hf_model.save_model(source.to(target), tokenizer, staging)
    del source
    stored = stored_dtypes(staging)
    if stored != {DTYPES[str(cfg.dtype)]}:
        raise SystemExit(f"error: the export's safetensors hold {sorted(stored)}, expected {DTYPES[str(cfg.dtype)]}")
    written = json.loads((staging / "config.json").read_text()).get("dtype")
    if written != str(cfg.dtype):
        raise SystemExit(f"error: the export's config.json says dtype {written!r}, expected {cfg.dtype!r}")
    exported = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32).to(placement.device).eval()
    result = compare(reference, logits(exported, prompts))
    print(f"logits of the {cfg.dtype} export vs the fp32 source: {result}", flush=True)
    for failure in failed_checks(result, check):
        fail(failure, staging)

    publish(staging, ctx.output_dir)
    runtime.finish(
        ctx,
        "checkpoint_hf",
        metrics={**result, "check_prompts": int(check.prompts)},
        metadata={
            "dtype": str(cfg.dtype),
            "parameters": hf_model.count_parameters(exported),
            "check_logits": {key: check.get(key) for key in LIMITS},
            "device": str(placement.device),
        },
    )


if __name__ == "__main__":
    main()

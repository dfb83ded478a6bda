"""A toy recipe for orchestration tests: counts to `steps` with checkpoints, then writes numbers.jsonl.

`fail_at` makes it exit 3 at that step once (a marker in work_dir remembers), `sleep` slows it down,
`chatter` prints that many lines at the very end, block-buffered (its output then arrives on exit).
"""

import json
import os
import sys
import time

from recipes.nano3 import runtime
from tests.toy_recipes.journal import record_start


def main() -> None:
    ctx = runtime.start()
    record_start(ctx.work_dir, ctx.output_dir)
    cfg = ctx.config
    start = 0
    found = runtime.latest_checkpoint(ctx.work_dir)
    if found:
        start = found[0]
        print(f"resumed from step {start}", flush=True)
    for step in range(start + 1, cfg.steps + 1):
        time.sleep(cfg.sleep)
        if step == cfg.fail_at and not (ctx.work_dir / "failed_once").exists():
            (ctx.work_dir / "failed_once").write_text("1")
            print(f"injected failure at step {step}", flush=True)
            sys.exit(3)
        path = runtime.checkpoint_dir(ctx.work_dir, step)
        path.mkdir(parents=True, exist_ok=True)
        runtime.mark_checkpoint_complete(path)
        runtime.progress(step, cfg.steps, value=step * cfg.scale)
    for i in range(cfg.chatter):
        print(f"chatter {i}")
    with (ctx.output_dir / "numbers.jsonl").open("w") as out:
        for i in range(cfg.steps):
            out.write(json.dumps({"n": i * cfg.scale}) + "\n")
    runtime.finish(
        ctx,
        "raw_jsonl",
        metrics={"steps": cfg.steps, "sum": sum(i * cfg.scale for i in range(cfg.steps))},
        metadata={
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "hf_token_length": len(os.environ.get("HF_TOKEN", "")),
        },
    )


if __name__ == "__main__":
    main()

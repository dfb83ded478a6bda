"""A toy training recipe: `steps` checkpointed steps whose state (a running sum over its input)
lives in the checkpoint, so a resumed job continues where the last complete checkpoint left off.

Writes model.json; the manifest's metadata says which step this job resumed from.
`fail_at` makes it exit 3 at that step once (a marker in work_dir remembers), `sleep` slows it down,
`pad_kb` adds a file of that many KiB to the output (a model too large for a full disk).
"""

import json
import sys
import time

from recipes.nano3 import runtime
from tests.toy_recipes.journal import record_start


def main() -> None:
    ctx = runtime.start()
    record_start(ctx.work_dir, ctx.output_dir)
    cfg = ctx.config
    numbers = [json.loads(line)["n"] for line in (ctx.input_path("data") / "numbers.jsonl").read_text().splitlines()]
    state = {"step": 0, "weight": 0}
    found = runtime.latest_checkpoint(ctx.work_dir)
    if found:
        state = json.loads((found[1] / "state.json").read_text())
        print(f"resumed from step {state['step']}", flush=True)
    resumed_from = state["step"]
    for step in range(state["step"] + 1, cfg.steps + 1):
        time.sleep(cfg.sleep)
        if step == cfg.fail_at and not (ctx.work_dir / "failed_once").exists():
            (ctx.work_dir / "failed_once").write_text("1")
            print(f"injected failure at step {step}", flush=True)
            sys.exit(3)
        state = {"step": step, "weight": state["weight"] + sum(numbers) * cfg.lr}
        path = runtime.checkpoint_dir(ctx.work_dir, step)
        path.mkdir(parents=True, exist_ok=True)
        (path / "state.json").write_text(json.dumps(state))
        runtime.mark_checkpoint_complete(path)
        runtime.prune_checkpoints(ctx.work_dir)
        runtime.progress(step, cfg.steps, weight=state["weight"])
    if cfg.pad_kb:
        (ctx.output_dir / "pad.bin").write_bytes(b"\0" * 1024 * cfg.pad_kb)
    (ctx.output_dir / "model.json").write_text(json.dumps(state))
    runtime.finish(ctx, "checkpoint_hf", metrics={"weight": state["weight"]}, metadata={"resumed_from": resumed_from})


if __name__ == "__main__":
    main()

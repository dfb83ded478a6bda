"""A toy recipe that the exactly-once tests (tests/reliability/test_exactly_once.py) hold still.

- `gate`: before runtime.start(), the job writes `<gate>.<pid>` and waits until the file `gate`
  exists: a job that its orchestrator has started but that has not reached its job lock yet.
- `release`: after runtime.start() (job lock held, orchestrator alive), the job waits until the
  file `release` exists before it writes its output and manifest, and does not watch its
  orchestrator: a job that has not yet noticed that its orchestrator is gone (the watcher's
  second, stretched for as long as the test needs).
"""

import json
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from recipes.nano3 import runtime
from tests.toy_recipes.journal import record_start


def wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.05)


def main() -> None:
    cfg = OmegaConf.load(sys.argv[sys.argv.index("--config") + 1])
    if cfg.gate:
        Path(f"{cfg.gate}.{os.getpid()}").write_text("")
        wait_for(Path(cfg.gate))
    if cfg.release:
        runtime.watch_orchestrator = lambda interval=1.0: None
    ctx = runtime.start()
    record_start(ctx.work_dir, ctx.output_dir)
    if cfg.release:
        wait_for(Path(cfg.release))
    with (ctx.output_dir / "numbers.jsonl").open("w") as out:
        for i in range(cfg.count):
            out.write(json.dumps({"n": i}) + "\n")
    runtime.finish(ctx, "raw_jsonl", metrics={"count": cfg.count}, metadata={"pid": os.getpid()})


if __name__ == "__main__":
    main()

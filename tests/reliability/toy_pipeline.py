"""A three-stage pipeline of toy recipes run the way `python -m flows.nano3` runs the real one.

    python -m tests.reliability.toy_pipeline [-r PROFILE] [--results FILE] [stage:]key=value ...

env.toml (profile, [wandb], [artifacts]) → job configs → the nano3 flow machinery
(flows.pipeline.execute_stages → the generic stage task → NeMo-Run), with toy recipes that keep
the recipe contract (checkpoints, resume, manifest) but take seconds: the orchestrator a
reliability test can kill, rerun, race and scan.

`--results FILE` writes each stage's status and published version as JSON once the flow ends.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow

from tasks.stages import Stage

TOYS = Path(__file__).resolve().parents[1] / "toy_recipes"
PRODUCE = Stage(id="toy/produce", folder="produce", script="produce.py", consumes=(), produces="raw_jsonl",
                artifact="toy-numbers", root=TOYS)
TRAIN = Stage(id="toy/train", folder="train", script="train.py", consumes=(("data", "raw_jsonl"),),
              produces="checkpoint_hf", artifact="toy-model", root=TOYS)
CONSUME = Stage(id="toy/consume", folder="consume", script="consume.py", consumes=(("data", "raw_jsonl"),),
                produces="eval_results", artifact="toy-total", root=TOYS)
TOY_STAGES = (PRODUCE, TRAIN, CONSUME)
FLOW_NAME = "nano3-toy"


@flow(name=FLOW_NAME)
def toy_pipeline(run: str | None = None, overrides: list[str] | None = None) -> list:
    """The toy stages in order, each through the generic stage task, as the nano3 flow runs them."""
    from flows.pipeline import execute_stages
    from flows.run_options import RunOptions, resolve_context, stage_jobs
    from tasks.artifacts import open_store

    context = resolve_context(RunOptions(config="tiny", run=run, overrides=tuple(overrides or ())))
    return execute_stages(stage_jobs(context, TOY_STAGES), open_store(context.artifacts), context.wandb)


def main(argv: list[str] | None = None, pipeline: Any = None, description: str = "") -> int:
    """The command line of a toy pipeline flow (this one, or another with the same parameters)."""
    parser = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    parser.add_argument("-r", "--run", default=None)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    flow = pipeline or toy_pipeline
    results = flow(run=args.run, overrides=args.overrides) if args.run else flow(overrides=args.overrides)
    summary = [{"stage": r.stage, "status": r.status, "artifact": r.artifact.ref, "digest": r.artifact.digest}
               for r in results]
    print(json.dumps(summary))
    if args.results:
        args.results.write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A one-stage pipeline of the held toy recipe (tests/reliability/held/held.py), run as
tests.reliability.toy_pipeline runs its stages: the nano3 flow machinery, a NeMo-Run local job.

    python -m tests.reliability.held_pipeline [--results FILE] [toy/held:]key=value ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from tasks.stages import Stage

HELD = Stage(id="toy/held", folder="held", script="held.py", consumes=(), produces="raw_jsonl",
             artifact="toy-held", root=Path(__file__).resolve().parent)


@flow(name="nano3-toy-held")
def held_pipeline(overrides: list[str] | None = None) -> list:
    from flows.pipeline import execute_stages
    from flows.run_options import RunOptions, resolve_context, stage_jobs
    from tasks.artifacts import open_store

    context = resolve_context(RunOptions(config="tiny", overrides=tuple(overrides or ())))
    return execute_stages(stage_jobs(context, (HELD,)), open_store(context.artifacts), context.wandb)


def main(argv: list[str] | None = None) -> int:
    from tests.reliability.toy_pipeline import main as toy_main

    return toy_main(argv, pipeline=held_pipeline, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())

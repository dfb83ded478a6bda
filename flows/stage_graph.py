"""The selected stages as a graph: which stage waits for which, and how many run at once.

A stage waits for the stages of this run that make the latest version of what it reads
(flows.run_options.made_in_run; a pinned version or an alias such as `production` is read from
the store whatever this run makes). The rest can run at the same time: the three data preps,
SFT's data prep beside pretraining, and so on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from blocks.errors import ConfigError
from flows.run_options import made_in_run
from tasks.job_config import COMMAND_LINE, JobConfig

#: Cores a local training job is given before a second one may start beside it: below this
#: share, torch's threads of two jobs slow both more than running them one after the other
#: (measured: 3 CI-sized runs at once on 2 cores took about 10 times as long as one).
CORES_PER_LOCAL_JOB = 8


def dependencies(jobs: Sequence[JobConfig]) -> dict[str, tuple[str, ...]]:
    """Stage id → the stages of `jobs` it waits for, in the jobs' order."""
    return {job.stage.id: tuple(dict.fromkeys(producer.stage.id for producer in made_in_run(jobs, job).values()))
            for job in jobs}


@dataclass(frozen=True)
class Parallelism:
    limit: int
    #: Where the limit comes from, for the dry-run and the flow's log.
    reason: str


def parallelism(jobs: Sequence[JobConfig], requested: int | None) -> Parallelism:
    """`--max-parallel`, else: every stage at once on a scheduler (each stage is its own job and
    the scheduler queues them), one per CORES_PER_LOCAL_JOB cores on this machine (at least one)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--max-parallel must be at least 1, not {requested}", file=COMMAND_LINE, key="--max-parallel")
        return Parallelism(requested, "--max-parallel")
    if any(job.profile.shares_this_machine for job in jobs):
        cores = os.cpu_count() or 1
        limit = max(1, cores // CORES_PER_LOCAL_JOB)
        return Parallelism(limit, f"jobs on this machine: {cores} cores, {CORES_PER_LOCAL_JOB} per job; --max-parallel to change")
    return Parallelism(max(1, len(jobs)), "every job has its own allocation; --max-parallel to bound")


def describe(jobs: Sequence[JobConfig], limit: Parallelism) -> list[str]:
    """The dry-run's account of the order: what each stage waits for, and the bound."""
    waits = dependencies(jobs)
    lines = [f"order: at most {limit.limit} stage{'s' if limit.limit != 1 else ''} at once ({limit.reason})"]
    width = max(len(job.stage.id) for job in jobs)
    for job in jobs:
        after = waits[job.stage.id]
        lines.append(f"  {job.stage.id:<{width}}  {'after ' + ', '.join(after) if after else 'starts at once'}")
    return lines

"""The toy stages on the local Slurm cluster through the project's own slurm profile.

Also a command (`python -m tests.infra.slurm_stages STORE JOB_DIR [override…]`) that runs the toy
producer as a flow in its own process: the orchestrator a test can kill while its job runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from blocks.profiles import parse_profile
from tasks.artifacts import ArtifactStore
from tasks.job_config import JobConfig, build_job_config, parse_overrides
from tasks.stages import PROJECT_ROOT, Stage
from tests.test_stage_task import CONSUME, PRODUCE


def slurm_section(job_dir: Path | None, **fields: object) -> dict[str, object]:
    """The env.toml section a user of the local cluster writes (docs/local-infrastructure.md),
    shipping the toy recipes beside the real ones. Without `job_dir`, NeMo-Run's home's
    experiments folder (what a user of several NeMo-Run homes leaves unset)."""
    section = {
        "executor": "slurm",
        "tunnel": "local",
        "account": "root",
        "partition": "debug",
        **({"job_dir": str(job_dir)} if job_dir is not None else {}),
        "time": "00:10:00",
        "packager": "pattern",
        "include_pattern": [str(PROJECT_ROOT / "recipes"), str(PROJECT_ROOT / "tests" / "toy_recipes")],
        "relative_path": [str(PROJECT_ROOT), str(PROJECT_ROOT)],
        **fields,
    }
    return section


def slurm_profile(job_dir: Path, **fields: object):  # noqa: ANN201 - SlurmProfile
    return parse_profile(slurm_section(job_dir, **fields), file="env.toml", section="local-slurm")


def slurm_job(stage: Stage, job_dir: Path, *overrides: str, **profile_fields: object) -> JobConfig:
    return build_job_config(stage, "tiny", profile=slurm_profile(job_dir, **profile_fields), profile_name="local-slurm",
                            profile_origin="test", overrides=parse_overrides(overrides))


@flow
def slurm_toy_flow(jobs: list[JobConfig], store: ArtifactStore) -> list:
    from flows.pipeline import execute_stages

    return execute_stages(jobs, store, None)


def main() -> None:
    store, job_dir, *overrides = sys.argv[1:]
    slurm_toy_flow([slurm_job(PRODUCE, Path(job_dir), *overrides)], ArtifactStore(store))


__all__ = ["CONSUME", "PRODUCE", "slurm_job", "slurm_profile", "slurm_section", "slurm_toy_flow"]

if __name__ == "__main__":
    main()

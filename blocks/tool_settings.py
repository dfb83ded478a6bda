"""The tool's own settings from the environment: every `NEMOTRON_*` / `NANO3_*` variable it reads.

One model instead of `os.environ.get` calls spread over modules, so the list in
docs/architecture.md is the list the code reads. Read fresh on each call: a test or a shell
that exports a variable sees it at once.

The recipes run in another process, container or node and never import this package; the
variables they read (`NANO3_SCRATCH`, `NANO3_ORCHESTRATOR_PID`) are declared here too so one
place names them all, and the job's environment is where they meet.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recipes.nano3.runtime import ORCHESTRATOR_PID_VAR, SCRATCH_VAR


class ToolSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_ignore_empty=True)

    env_file: Path | None = Field(
        None, validation_alias="NEMOTRON_ENV_FILE", description="The env.toml to use, instead of ./env.toml upwards."
    )
    artifacts_root: str | None = Field(
        None,
        validation_alias="NANO3_ARTIFACTS_ROOT",
        description="The artifact store (folder or fsspec URL) when env.toml has no [artifacts] root.",
    )
    scratch: Path | None = Field(
        None,
        validation_alias=SCRATCH_VAR,
        description="Local scratch of jobs whose store is remote (checkpoints of a running stage); "
        "default ~/.cache/nano3. Read by the recipes.",
    )
    orchestrator_pid: str | None = Field(
        None,
        validation_alias=ORCHESTRATOR_PID_VAR,
        description="Set by the tool for local jobs: the job stops when this process is gone. Read by the recipes.",
    )
    local_server_idle_minutes: float = Field(
        15.0,
        ge=0,
        validation_alias="NANO3_LOCAL_SERVER_IDLE_MINUTES",
        description="Without PREFECT_API_URL, commands share a local Prefect server (its UI included) that stops "
        "after this many minutes without one; 0: Prefect's temporary server for each command.",
    )
    project_dir: Path | None = Field(
        None,
        validation_alias="NANO3_PROJECT_DIR",
        description="The checkout a Prefect worker runs deployment flow runs in (deployments/prefect.yaml).",
    )


def tool_settings() -> ToolSettings:
    return ToolSettings()


#: Every variable the model reads, for docs and for `--help` texts.
TOOL_VARIABLES: tuple[str, ...] = tuple(
    str(info.validation_alias) for info in ToolSettings.model_fields.values()
)

"""`python -m deployments.serve`: scheduled retraining from one long-running process.

    python -m deployments.serve                                  # weekly, Sunday 03:00 UTC, config tiny, here
    python -m deployments.serve --cron "0 2 * * *" -r my-cluster  # nightly, attached on a cluster profile
    python -m deployments.serve --stages data_prep/sft,sft sft:train.train_iters=50

It registers the deployment `nano3/retrain-serve` with its schedule and parameters, then runs
every scheduled or manually triggered run itself, until stopped: no work pool, no worker. For
runs that a worker of the process work pool `nano3-process` picks up, deploy
deployments/prefect.yaml instead (docs/deployments.md).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.commands.errors import user_errors
from flows.commands.options import OVERRIDES, OVERRIDES_HELP, BatchOption, ConfigOption, MaxParallelOption, RunOption

if TYPE_CHECKING:
    from prefect.schedules import Schedule

DEPLOYMENT_NAME = "retrain-serve"
#: Sunday 03:00: a week of new data in, and the cluster is quiet. deployments/prefect.yaml agrees.
WEEKLY_CRON = "0 3 * * 0"
TIMEZONE = "UTC"

app = typer.Typer(add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False)


def retrain_parameters(
    config: str | None, run: str | None, batch: str | None, stages: str | None, overrides: list[str],
    max_parallel: int | None = None,
) -> dict[str, Any]:
    """The nano3 flow's parameters, checked as `python -m flows.nano3` checks its command line, so
    a typo stops the command now rather than failing the first scheduled run a week later."""
    from flows.nano3 import make_options, select_stages
    from tasks.job_config import parse_overrides

    options = make_options(config, run, batch, False, overrides, max_parallel)
    parse_overrides(options.overrides)
    return {
        "config": options.config,
        "run": options.run,
        "batch": options.batch,
        "stages": [stage.id for stage in select_stages(stages)] if stages else None,
        "overrides": list(options.overrides),
        "max_parallel": options.max_parallel,
    }


def retrain_schedule(cron: str, timezone: str) -> Schedule:
    """The cron schedule; a bad cron or time zone is bad input that names its option, like any other."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron
    from pydantic import ValidationError

    from blocks.errors import ConfigError
    from tasks.job_config import COMMAND_LINE

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as bad:
        error = bad.errors()[0]
        key = "--timezone" if error["loc"] == ("timezone",) else "--cron"
        raise ConfigError(error["msg"].removeprefix("Value error, "), file=COMMAND_LINE, key=key) from None
    return Cron(cron, timezone=timezone)


@app.command(context_settings=OVERRIDES, help=f"Serve the nano3 pipeline on a cron schedule. {OVERRIDES_HELP}")
@user_errors
def main(
    ctx: typer.Context,
    cron: Annotated[str, typer.Option(help="When to retrain (cron: minute hour day month weekday).")] = WEEKLY_CRON,
    timezone: Annotated[str, typer.Option(help="The cron's time zone (IANA name).")] = TIMEZONE,
    name: Annotated[str, typer.Option(help="The deployment's name, under the flow `nano3`.")] = DEPLOYMENT_NAME,
    config: ConfigOption = "tiny",
    run: RunOption = None,
    batch: BatchOption = None,
    stages: Annotated[str | None, typer.Option(help="Comma-separated subset of the stages (default: all).")] = None,
    max_parallel: MaxParallelOption = None,
) -> None:
    from flows.pipeline import nano3_pipeline

    schedule = retrain_schedule(cron, timezone)
    parameters = retrain_parameters(config, run, batch, stages, ctx.args, max_parallel)
    nano3_pipeline.serve(name=name, schedule=schedule, parameters=parameters)


if __name__ == "__main__":
    sys.exit(app())

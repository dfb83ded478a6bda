"""`nemotron nano3 …`: one command per stage, built from the stage table, and `pipe` for all of them.

    nemotron nano3 data prep pretrain|sft|rl   the data_prep/* stages
    nemotron nano3 pretrain|sft|rl|convert|eval
    nemotron nano3 pipe                        every stage, in order (same as python -m flows.nano3)

Every command takes the seeds' global options (-c, -r, -b, -d, key=value overrides) and runs as a
Prefect flow through flows.nano3.run_stages; a stage added to tasks/stages.py gets its command here
without a line of code.
"""

from __future__ import annotations

from collections.abc import Callable


import typer

from flows.commands.errors import set_verbose, user_errors
from flows.commands.options import (
    DATA_PREP,
    command_for,
    OVERRIDES,
    OVERRIDES_HELP,
    BatchOption,
    StagesOption,
    ConfigOption,
    MaxParallelOption,
    DryRunOption,
    RunOption,
    VerboseOption,
)
from tasks.stages import STAGES, Stage

#: Stage ids with this prefix live under `nano3 data prep` (the seeds' command names).

nano3_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="The nano3 training recipe: data prep → pretrain → SFT → RL → convert → eval.",
)
data_app = typer.Typer(no_args_is_help=True, help="Data for the nano3 stages.")
prep_app = typer.Typer(no_args_is_help=True, help="Prepare a stage's data: pretrain, sft or rl.")
data_app.add_typer(prep_app, name="prep")
nano3_app.add_typer(data_app, name="data", rich_help_panel="Data")


def _configs(stage: Stage) -> str:
    return ", ".join(sorted(p.stem for p in stage.config_dir.glob("*.yaml")))


def _help(stage: Stage) -> str:
    consumes = ", ".join(
        f"{name} ({kind}{', optional' if name in stage.optional else ''})" for name, kind in stage.consumes
    ) or "nothing"
    return (
        f"{stage.description}\n\n"
        f"Consumes: {consumes}. Produces: {stage.produces} ({stage.artifact}). Configs: {_configs(stage)}.\n\n"
        f"{OVERRIDES_HELP}"
    )


def _stage_command(stage: Stage) -> Callable[..., None]:
    """The command of one stage: the options, then flows.nano3.run_stages on that stage alone."""

    def command(
        ctx: typer.Context,
        config: ConfigOption = "tiny",
        run: RunOption = None,
        batch: BatchOption = None,
        dry_run: DryRunOption = False,
        verbose: VerboseOption = False,
    ) -> None:
        from flows.nano3 import make_options, run_stages, stage_flow_name

        set_verbose(verbose)
        run_stages(make_options(config, run, batch, dry_run, ctx.args), [stage], stage_flow_name([stage]))

    command.__name__ = stage.slug.replace("-", "_")
    return user_errors(command)


for _stage in STAGES:
    if _stage.id.startswith(DATA_PREP):
        group, name, panel = prep_app, _stage.id.removeprefix(DATA_PREP), None
    else:
        group, name, panel = nano3_app, _stage.id, "Stages"
    group.command(name, context_settings=OVERRIDES, help=_help(_stage), rich_help_panel=panel)(_stage_command(_stage))


@nano3_app.command("pipe", context_settings=OVERRIDES, rich_help_panel="Pipeline")
@user_errors
def pipe(
    ctx: typer.Context,
    config: ConfigOption = "tiny",
    run: RunOption = None,
    batch: BatchOption = None,
    dry_run: DryRunOption = False,
    stages: StagesOption = None,
    max_parallel: MaxParallelOption = None,
    verbose: VerboseOption = False,
) -> None:
    """The whole pipeline in one Prefect flow: each stage once its inputs exist (independent ones at
    the same time), each cached by its inputs and config.

    With --batch, the stages whose inputs exist are submitted and the command returns; run it again
    later to publish what finished and submit the next stages. Trailing key=value arguments override
    the config (sft:train.lr=1e-4 for one stage only) or the execution profile (run.env.nodes=2).
    """
    from flows.nano3 import PIPELINE_FLOW, make_options, run_stages, select_stages

    set_verbose(verbose)
    run_stages(make_options(config, run, batch, dry_run, ctx.args, max_parallel), select_stages(stages), PIPELINE_FLOW)

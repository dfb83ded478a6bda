"""The seeds' global options, declared once for every command that runs stages or steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from tasks.stages import Stage

ConfigOption = Annotated[
    str | None,
    typer.Option("-c", "--config", metavar="NAME", help="Config name (tiny, default, …) or a YAML path."),
]
RunOption = Annotated[
    str | None,
    typer.Option("-r", "--run", metavar="PROFILE", help="Run attached on PROFILE: waits, streams the job's logs."),
]
BatchOption = Annotated[
    str | None,
    typer.Option("-b", "--batch", metavar="PROFILE", help="Submit detached to PROFILE: returns the job id."),
]
DryRunOption = Annotated[
    bool,
    typer.Option("-d", "--dry-run", help="Print the compiled config and the exact submission (secrets redacted); submit nothing."),
]
StagesOption = Annotated[
    str | None,
    typer.Option("--stages", metavar="IDS", help="Comma-separated subset of the stages (data_prep/pretrain,pretrain,…)."),
]
MaxParallelOption = Annotated[
    int | None,
    typer.Option("--max-parallel", metavar="N", min=1,
                 help="Stages running at once, where their inputs allow (default: all on a scheduler; "
                      "one per 8 cores on this machine)."),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")]

#: Trailing `key=value` arguments are overrides; anything else that looks like an option is an error.
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": False}
OVERRIDES_HELP = (
    "Trailing key=value arguments override the config (train.train_iters=50) or the execution "
    "profile (run.env.nodes=2). Without --run or --batch the job runs on this machine."
)


#: Stage ids under this prefix are `nemotron nano3 data prep <kind>` commands.
DATA_PREP = "data_prep/"


def command_for(stage: Stage) -> str:
    """The command that runs a stage: data_prep/sft → `nemotron nano3 data prep sft`."""
    words = ["data", "prep", stage.id.removeprefix(DATA_PREP)] if stage.id.startswith(DATA_PREP) else [stage.id]
    return " ".join(["nemotron", "nano3", *words])

"""`python -m flows.nano3`: the nano3 pipeline, end to end.

    python -m flows.nano3                          # this machine, config tiny
    python -m flows.nano3 -r my-cluster -d         # the plan of every stage, attached
    python -m flows.nano3 -b my-cluster -d         # ... detached (batch partition)
    python -m flows.nano3 --stages pretrain,sft train.train_iters=20
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from blocks.errors import ConfigError
from tasks.stages import STAGES, STAGES_BY_ID, Stage

app = typer.Typer(add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False)


def select_stages(spec: str | None) -> list[Stage]:
    if not spec:
        return list(STAGES)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES_BY_ID]
    if unknown:
        from blocks.errors import did_you_mean

        raise ConfigError(
            f"unknown stage '{unknown[0]}'",
            file="command line",
            key="--stages",
            hint=did_you_mean(unknown[0], STAGES_BY_ID) or f"stages: {', '.join(STAGES_BY_ID)}",
        )
    return [s for s in STAGES if s.id in wanted]


def print_plan(options: "RunOptions", stages: list[Stage]) -> None:  # noqa: F821
    from flows.run_options import resolve_context, stage_jobs
    from tasks.submission import plan_submission, render_plan

    context = resolve_context(options)
    jobs = stage_jobs(context, stages)
    for job in jobs:
        print(f"=== {job.stage.id} " + "=" * max(0, 60 - len(job.stage.id)))
        print(render_plan(plan_submission(job, detached=options.detached)))


def run_pipeline(options: "RunOptions", stages: list[Stage]) -> None:  # noqa: F821
    from rich.console import Console

    from flows.pipeline import nano3_pipeline
    from flows.summary import summary_table

    results = nano3_pipeline(
        config=options.config,
        run=options.run,
        batch=options.batch,
        stages=[s.id for s in stages],
        overrides=list(options.overrides),
    )
    # Wide enough for full stage and artifact names when the output is a file or a pipe.
    Console(width=None if sys.stdout.isatty() else 160).print(summary_table(results))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def main(
    ctx: typer.Context,
    config: Annotated[str, typer.Option("-c", "--config", help="Config name (tiny, default) or a YAML path.")] = "tiny",
    run: Annotated[str | None, typer.Option("-r", "--run", help="Profile to run attached (waits, streams logs).")] = None,
    batch: Annotated[
        str | None, typer.Option("-b", "--batch", help="Profile to submit detached (returns job ids).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("-d", "--dry-run", help="Print every stage's config and exact submission; submit nothing.")
    ] = False,
    stages: Annotated[
        str | None, typer.Option("--stages", help=f"Comma-separated subset of: {', '.join(STAGES_BY_ID)}.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks.")] = False,
) -> None:
    """Run the nano3 pipeline (data prep → pretrain → SFT → RL → convert → eval).

    Trailing key=value arguments override the recipe configs (train.train_iters=50) or the
    execution profile (run.env.nodes=2). Profiles come from env.toml (NEMOTRON_ENV_FILE or the
    nearest env.toml upwards), else from Prefect blocks pushed with `nemotron profiles push`.
    """
    from flows.run_options import RunOptions

    try:
        options = RunOptions(config=config, run=run, batch=batch, dry_run=dry_run, overrides=tuple(ctx.args))
        selected = select_stages(stages)
        if dry_run:
            print_plan(options, selected)
            return
        run_pipeline(options, selected)
    except ConfigError as exc:
        if verbose:
            raise
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    sys.exit(app())

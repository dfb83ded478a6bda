"""`python -m flows.nano3`: the nano3 pipeline, end to end (the same as `nemotron nano3 pipe`).

    python -m flows.nano3                          # this machine, config tiny
    python -m flows.nano3 -r my-cluster -d         # the plan of every stage, attached
    python -m flows.nano3 -b my-cluster -d         # ... detached (batch partition)
    python -m flows.nano3 --stages pretrain,sft train.train_iters=20

`run_stages` is what every command that runs stages goes through: `nemotron nano3 <stage>`,
`nemotron nano3 pipe`, `nemotron steps run <step>` and this module differ only in which stages
they select and what they call the Prefect flow.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from blocks.errors import ConfigError
from flows.commands.errors import quiet_prefect_tracebacks, set_verbose, user_errors
from flows.commands.options import (
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
from tasks.stages import STAGES, STAGES_BY_ID, Stage

if TYPE_CHECKING:
    from flows.run_options import RunOptions

#: The flow of the whole pipeline; one-stage commands name theirs after the stage.
PIPELINE_FLOW = "nano3"

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


def stage_flow_name(stages: list[Stage]) -> str:
    """`nano3-pretrain`, `nano3-data_prep-sft`: one Prefect flow per stage, as the UI lists them."""
    return f"{PIPELINE_FLOW}-{stages[0].slug}" if len(stages) == 1 else PIPELINE_FLOW


def print_plan(options: RunOptions, stages: list[Stage]) -> None:
    from tasks.lean_imports import without
    from flows.run_options import resolve_run

    resolved = resolve_run(options, stages)
    context, jobs = resolved.context, resolved.jobs
    with without():
        from tasks import data_sources
        from tasks.artifacts import open_store
        from tasks.gate import gate_config
        from tasks.nemo_run_for_planning import import_nemo_run_for_planning
        from tasks.submission import plan_submission, render_plan

        # Only the executors these plans render: NeMo-Run's others are seconds of imports.
        import_nemo_run_for_planning(job.profile.executor for job in jobs)
        if len(jobs) > 1 and not options.detached:
            from flows.stage_graph import describe, parallelism

            print("\n".join(describe(jobs, parallelism(jobs, options.max_parallel))))
        # The store and [wandb] add secret env vars to every job: the plan names them, as sent.
        store = open_store(context.artifacts)
        for job in jobs:
            print(f"=== {job.stage.id} " + "=" * max(0, 60 - len(job.stage.id)))
            print(render_plan(plan_submission(job, detached=options.detached, store=store, wandb=context.wandb)))
            found = data_sources.data_sources(job, store)
            if found:
                # The shards' fingerprint is part of the stage's key: new or changed shards rerun it.
                print("--- data sources (their fingerprint is in the cache key)")
                print("\n".join(f"  {data_sources.describe(source, store)}" for source in found))
            gate = gate_config(job.recipe_config.get("run"), str(job.config_file))
            if gate is not None:
                print(f"--- gate (after the job): promote run.model to production if {gate.metric} is at least as good "
                      f"({gate.direction} is better, tolerance {gate.tolerance:g})")


def run_pipeline(options: RunOptions, stages: list[Stage], flow_name: str = PIPELINE_FLOW) -> None:
    """Attached: the stages run inside one Prefect flow, each once its inputs exist (independent ones
    at once, flows.stage_graph), with progress bars on a terminal."""
    from flows.pipeline import nano3_pipeline
    from flows.progress import stage_progress_bars
    from flows.summary import gate_lines, report_tables, summary_table, wide_console

    pipeline = nano3_pipeline if flow_name == PIPELINE_FLOW else nano3_pipeline.with_options(name=flow_name)
    quiet_prefect_tracebacks()
    with stage_progress_bars():
        results = pipeline(
            config=options.config,
            run=options.run,
            batch=options.batch,
            stages=[s.id for s in stages],
            overrides=list(options.overrides),
            max_parallel=options.max_parallel,
        )
    console = wide_console()
    console.print(summary_table(results, title=flow_name))
    for table in report_tables(results):
        console.print(table)
    for line in gate_lines(results):
        console.print(line, soft_wrap=True, highlight=False)


def submit_detached(options: RunOptions, stages: list[Stage], flow_name: str = PIPELINE_FLOW) -> None:
    """Detached: submit what can start now, print the job ids and how to follow them."""
    from flows.detached import submit_flow
    from flows.summary import submissions_table, wide_console

    assert options.batch is not None
    quiet_prefect_tracebacks()
    submissions = submit_flow.with_options(name=f"{flow_name}-submit")(
        config=options.config, batch=options.batch, stages=[s.id for s in stages], overrides=list(options.overrides)
    )
    wide_console().print(submissions_table(submissions))
    started = [s.experiment_id for s in submissions if s.experiment_id]
    if started:
        print(f"follow: nemotron runs status {started[0]}   |   nemotron runs logs {started[0]} --follow")
    if any(s.status in ("waiting", "running") for s in submissions):
        print("run this command again once they finish: it publishes their outputs and submits what waits on them")


def run_stages(options: RunOptions, stages: list[Stage], flow_name: str = PIPELINE_FLOW) -> None:
    """Dry-run, detached or attached. Bad input fails before Prefect starts anything."""
    if options.dry_run:
        print_plan(options, stages)
        return
    from flows.run_options import check_inputs, hand_over, resolve_run
    from tasks.artifacts import open_store

    resolved = resolve_run(options, stages)
    context = resolved.context
    if options.detached:
        from flows.detached import check_detachable

        check_detachable(context)
    check_inputs(resolved.jobs, open_store(context.artifacts))
    hand_over(options, stages, resolved)
    from blocks.prefect_server import use_local_server
    from flows.stop_signals import stopped_by_signals

    local = use_local_server()
    if local is not None:
        print(local.describe(), file=sys.stderr)

    with stopped_by_signals():
        if options.detached:
            submit_detached(options, stages, flow_name)
        else:
            run_pipeline(options, stages, flow_name)


def make_options(
    config: str | None, run: str | None, batch: str | None, dry_run: bool, overrides: list[str],
    max_parallel: int | None = None,
) -> RunOptions:
    from flows.run_options import RunOptions

    return RunOptions(config=config or "tiny", run=run, batch=batch, dry_run=dry_run, overrides=tuple(overrides),
                      max_parallel=max_parallel)


@app.command(context_settings=OVERRIDES, help=f"Run the nano3 pipeline (data prep → pretrain → SFT → RL → convert → eval). {OVERRIDES_HELP}")
@user_errors
def main(
    ctx: typer.Context,
    config: ConfigOption = "tiny",
    run: RunOption = None,
    batch: BatchOption = None,
    dry_run: DryRunOption = False,
    stages: StagesOption = None,
    max_parallel: MaxParallelOption = None,
    verbose: VerboseOption = False,
) -> None:
    set_verbose(verbose)
    run_stages(make_options(config, run, batch, dry_run, ctx.args, max_parallel), select_stages(stages))


if __name__ == "__main__":
    sys.exit(app())

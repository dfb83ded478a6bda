"""How the command line reports failure: one line and a hint, an exit code, a traceback on request.

Bad input (a ConfigError: file, section, key) exits with 2; work that failed (a job, a missing
artifact, an unreachable scheduler) exits with 1. `--verbose` re-raises instead, traceback and all.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
import typer

from blocks.errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
#: The `file` of an error in the arguments (tasks.job_config.COMMAND_LINE, without its imports).
COMMAND_LINE = "command line"
_verbose = {"on": False}


def set_verbose(on: bool) -> None:
    """`--verbose` may be given to `nemotron` or to a command; either turns tracebacks on."""
    _verbose["on"] = _verbose["on"] or on


def is_verbose() -> bool:
    return _verbose["on"]


def _is(exc: BaseException, module: str, name: str) -> bool:
    """isinstance without importing `module`: an exception of a type never imported cannot occur."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, getattr(loaded, name))


def describe_failure(exc: BaseException) -> str:
    """`message (hint)` for an error that is not bad input."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    message = lines[0].removesuffix(":").removesuffix("; last log lines")
    if _is(exc, "tasks.artifacts", "ArtifactError"):
        hint = "run the stage that publishes it first, or point run.<input> at a published version"
    elif _is(exc, "tasks.stage_task", "StageFailed"):
        hint = "the job's log is above; `nemotron runs list` finds the submission"
    else:
        message = f"{type(exc).__name__}: {message}"
        hint = "rerun with --verbose for the traceback"
    return f"{message} ({hint})"


def fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: ConfigError → `error: <file: [section] key: message (hint)>`, exit 2;
    any other failure → `error: <message> (<hint>)`, exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # The reader left (`| head`): nothing to report, and nothing more to print.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except ConfigError as exc:
            if is_verbose():
                raise
            raise fail(str(exc), EXIT_BAD_INPUT) from None
        except Exception as exc:  # noqa: BLE001 - the one place that turns failures into a line
            if is_verbose():
                raise
            raise fail(describe_failure(exc), EXIT_FAILED) from None

    return wrapper


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_prefect_tracebacks() -> None:
    """Prefect logs a failed task or flow with its traceback; without --verbose the console shows
    the log line alone and the command ends with its one-line error."""
    if is_verbose():
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoTraceback) for f in handler.filters):
            handler.addFilter(_NoTraceback())

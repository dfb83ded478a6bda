"""Leaving the waits on jobs when the run that waits for them ends.

Independent stages run in worker threads (flows.pipeline), and only the main thread receives a
stop signal. When it does, Prefect's flow engine raises in the main thread and then, leaving its
task runner, joins those threads: a thread still waiting on a job would hold the command until
the job ends (a local job waits for the command to end: neither would). So:

- `stoppable_waits()` gives the threads a run starts (they inherit its context) an event that
  the run sets when its main thread leaves early (flows.pipeline.execute_stages);
- `stop_waiting()` is the process-wide stop, set by the stop signal's handler (flows.stop_signals).

A thread's wait then ends within POLL_SLICE_SECONDS with WaitStopped. A local job stops with its
orchestrator; a scheduler's job is re-attached by the rerun.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator

#: The longest a waiting thread sleeps before it looks whether its run is ending.
POLL_SLICE_SECONDS = 0.5

_process_stopping = threading.Event()
_run_ending: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("nano3_run_ending", default=None)


class WaitStopped(BaseException):
    """Raised in a thread waiting on a job once its run is ending. A BaseException, as a stop
    signal's is: the stage task ends crashed, not failed and retried."""


def stop_waiting() -> None:
    """The process is stopping (a stop signal): every wait on a job ends."""
    _process_stopping.set()


@contextlib.contextmanager
def stoppable_waits() -> Iterator[threading.Event]:
    """An event that ends the waits of the threads started inside this block, once set."""
    ending = threading.Event()
    token = _run_ending.set(ending)
    try:
        yield ending
    finally:
        _run_ending.reset(token)


def _ending() -> bool:
    run = _run_ending.get()
    return _process_stopping.is_set() or (run is not None and run.is_set())


def sleep_unless_stopping(seconds: float, what: str) -> None:
    """`time.sleep(seconds)`, cut short by WaitStopped when the run or the process is ending."""
    deadline = time.monotonic() + seconds
    while True:
        if _ending():
            raise WaitStopped(f"stopped while waiting for {what}")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, POLL_SLICE_SECONDS))

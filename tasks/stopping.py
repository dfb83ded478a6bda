"""A process-wide "this run is stopping", for the threads that wait on jobs.

Independent stages run in worker threads (flows.pipeline), and only the main thread receives a
stop signal: its handler (flows.stop_signals) raises there and marks the process stopping here.
A thread waiting on a job leaves its wait within a poll, so the process exits at once instead of
joining threads that wait on jobs which themselves wait for the process to exit. A local job
stops with its orchestrator; a scheduler's job is re-attached by the rerun.
"""

from __future__ import annotations

import threading

_stopping = threading.Event()


class WaitStopped(BaseException):
    """Raised in a thread waiting on a job once the process is stopping. A BaseException, as a
    stop signal's is: the stage task ends crashed, not failed and retried."""


def stop_waiting() -> None:
    _stopping.set()


def leave_if_stopping(what: str) -> None:
    if _stopping.is_set():
        raise WaitStopped(f"stopped while waiting for {what}")


def sleep_unless_stopping(seconds: float, what: str) -> None:
    """`time.sleep(seconds)`, cut short (WaitStopped) when the process starts stopping."""
    _stopping.wait(seconds)
    leave_if_stopping(what)

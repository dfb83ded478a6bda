"""How a run stops: `kill <pid>`, Ctrl-C and a closed terminal all take one path.

Every command that runs stages goes through `stopped_by_signals` (flows.nano3.run_stages).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from tasks.stopping import stop_waiting

#: The signals that stop a run: `kill <pid>`, Ctrl-C, the terminal closing.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: How long a stopped run may spend reporting the stop to Prefect before it exits without it.
#: Prefect retries an API call with backoff (2, 4, ... 32 s) while its server is busy or gone, and
#: sends its queued logs and events at exit without a time limit; a reachable server needs about
#: a second for all of it.
STOP_DEADLINE_SECONDS = 20.0
_stop: dict[str, Any] = {"signal": None, "server": None}


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """`kill <pid>` (SIGTERM), Ctrl-C (SIGINT) and a closed terminal (SIGHUP) stop a run one way.

    - Every stop signal takes SIGTERM's path. Inside a flow run Prefect's SIGTERM handler raises
      its TerminationSignal wherever the run is (the task and the flow run end Crashed, not
      retried), then hands the signal back to this module's handler, which exits through Python's
      exit path: exit handlers run (Prefect's temporary server stops) and a local job stops within
      a second of its orchestrator. Outside a flow run that handler exits at once. The exit code
      is 128 + the signal's number: 143 for `kill`, 130 for Ctrl-C.
    - A terminal sends Ctrl-C to its whole foreground process group. Prefect's temporary server
      (started when no server is configured) was in it and stopped with the command, whose report
      of the stop then retried against a server that was gone, about a minute per API call, while
      the job ran on: the server is started here, first, in its own session.
    - A stop that has not exited within STOP_DEADLINE_SECONDS (a busy or unreachable Prefect
      server) exits without finishing its report; the temporary server is stopped first. The time
      counts from the signal; for SIGTERM during a flow run, from Prefect's crash report, which
      its handler makes first.
    - A signal set to be ignored (`nohup`, a background job of a shell) stays ignored.
    """
    from prefect.exceptions import TerminationSignal

    saved: dict[signal.Signals, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: signals are the main thread's
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                saved[sig] = signal.signal(sig, _exit_on_signal if sig == signal.SIGTERM else _as_sigterm)
    try:
        _start_temporary_server_apart()
        yield
    except (TerminationSignal, KeyboardInterrupt) as exc:
        # A stop signal that surfaced past Prefect's handling of it.
        raise SystemExit(128 + int(getattr(exc, "signal", signal.SIGINT))) from None
    finally:
        if _stop["signal"] is None:
            # A stopped run keeps the handlers while it exits: a second signal exits the same way.
            for sig, handler in saved.items():
                signal.signal(sig, handler)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM's handler while no flow run holds it; Prefect hands a stop signal back to it."""
    _arm_stop_deadline(signum)
    raise SystemExit(128 + signum)


def _as_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGINT's and SIGHUP's handler: whatever handles SIGTERM now handles them (Prefect's, during
    a flow run). Python's KeyboardInterrupt for Ctrl-C took another path than SIGTERM's: past
    Prefect's crash report, the interpreter's exit sent the run's queued logs and events without a
    time limit, retrying while the server was busy."""
    _arm_stop_deadline(signum)
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler) and handler is not _as_sigterm:
        handler(signum, frame)
    raise SystemExit(128 + signum)


def _arm_stop_deadline(signum: int) -> None:
    if _stop["signal"] is not None:
        return
    _stop["signal"] = signum
    stop_waiting()  # the stage threads waiting on jobs leave their waits
    timer = threading.Timer(STOP_DEADLINE_SECONDS, _exit_now, args=(128 + signum,))
    timer.daemon = True
    with contextlib.suppress(RuntimeError):  # a signal during interpreter shutdown: it is exiting
        timer.start()


def _exit_now(code: int) -> None:
    print(
        f"stopped: Prefect did not finish reporting the stop within {STOP_DEADLINE_SECONDS:.0f} s; exiting without it",
        file=sys.stderr,
        flush=True,
    )
    server = _stop["server"]
    if server is not None and server.server_process is not None:
        server.server_process.terminate()
    os._exit(code)


class _NewSessionPopen(subprocess.Popen):
    """A child that does not share the terminal's process group, nor the signals sent to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["start_new_session"] = True
        super().__init__(*args, **kwargs)


class _SubprocessInNewSessions:
    """The `subprocess` module as Prefect's server module sees it while it starts a server."""

    Popen = _NewSessionPopen

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)


def _start_temporary_server_apart() -> None:
    """Start the temporary server Prefect would start on the run's first API call (when no server
    is configured) now, in its own session: a terminal's Ctrl-C reaches the command alone, which
    reports the stop to the server and stops it on exit."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api import server as api_server

    _stop["server"] = server = api_server.SubprocessASGIServer()
    api_server.subprocess = _SubprocessInNewSessions()  # type: ignore[assignment]
    try:
        server.start()
    finally:
        api_server.subprocess = subprocess

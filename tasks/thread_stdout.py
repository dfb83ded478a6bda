"""stdout redirected for one thread, not the whole process.

`contextlib.redirect_stdout` swaps `sys.stdout` for every thread: two stages submitting at once
(the pipeline runs independent stages in parallel) would swap it under each other, one's log
lines landing in the other's buffer and the terminal's stdout lost when they leave out of order.
Here `sys.stdout` becomes, once, a proxy that writes to the target of the current context (a
context variable: threads started with a copy of the context, as NeMo-Run's job launches are,
write where their starter does), and to the stdout it replaced where none is set.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

_install = threading.Lock()
_target: contextvars.ContextVar[TextIO | None] = contextvars.ContextVar("nano3_stdout", default=None)


class ThreadStdout:
    """`sys.stdout` for each context: its own target where it set one, else the replaced stdout."""

    def __init__(self, shared: TextIO) -> None:
        self.shared = shared

    @property
    def target(self) -> TextIO:
        target = _target.get()
        return self.shared if target is None else target

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... of the target
        return getattr(self.target, name)


@contextlib.contextmanager
def thread_stdout(target: TextIO | None) -> Iterator[None]:
    """While inside, this thread's prints (and those of threads it starts with its context) go to
    `target` (None: to the process's stdout)."""
    with _install:
        if not isinstance(sys.stdout, ThreadStdout):
            sys.stdout = ThreadStdout(sys.stdout)
    token = _target.set(target)
    try:
        yield
    finally:
        _target.reset(token)

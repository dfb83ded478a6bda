"""Riding out an object store's outage (a restart, a failover): a call that could not reach the
store is made again, with backoff, for a bounded time.

Used by jobs (uploading outputs, fetching inputs) and by the orchestrator's artifact store
(tasks.artifacts), so both survive the same outages the same way. Errors that are answers (a
missing object, a refused conditional write, a full disk) are never retried here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: How long a call keeps trying through an outage before its error is raised.
OUTAGE_LIMIT_SECONDS = 10 * 60
#: The first wait between tries, doubling up to the cap.
BACKOFF_SECONDS = (1.0, 30.0)
#: Exception classes of the S3 client stack that mean "could not talk to the server", by name,
#: so that a job on a local store needs none of those packages.
_CONNECTION_FAILURES = {
    ("botocore", "ConnectionError"),  # EndpointConnectionError, ConnectTimeoutError, …
    ("botocore", "HTTPClientError"),  # ConnectionClosedError, ReadTimeoutError
    ("aiohttp", "ClientConnectionError"),  # ServerDisconnectedError, ClientConnectorError
}


def backoff_delays() -> Iterator[float]:
    """The waits between tries of anything that did not answer (the store, a scheduler): 1, 2, 4
    … seconds, capped. One schedule, so every retry loop of the tool backs off alike."""
    first, cap = BACKOFF_SECONDS
    tries = 0
    while True:
        yield min(cap, first * 2**tries)
        tries += 1


def is_connection_failure(error: BaseException) -> bool:
    """The store could not be reached, or dropped the connection: trying again may work."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return any((cls.__module__.split(".")[0], cls.__name__) in _CONNECTION_FAILURES for cls in type(error).__mro__)


def through_outages(
    call: Callable[[], T],
    *,
    what: str,
    tell: Callable[[str], None],
    limit_seconds: float = OUTAGE_LIMIT_SECONDS,
) -> T:
    """`call()`, tried again while it fails to reach the store: one `tell` line per wait."""
    started = time.monotonic()
    delays = backoff_delays()
    tries = 0
    while True:
        try:
            result = call()
        except Exception as error:
            if not is_connection_failure(error) or time.monotonic() - started > limit_seconds:
                raise
            delay = next(delays)
            tries += 1
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            tell(f"{what}: the artifact store did not answer ({reason}); trying again in {delay:.0f} s")
            time.sleep(delay)
            continue
        if tries:
            tell(f"{what}: the artifact store answers again after {time.monotonic() - started:.0f} s")
        return result

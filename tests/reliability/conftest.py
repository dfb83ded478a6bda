"""One Prefect server per module: the toy pipelines run in other processes and report to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


# The real S3 server of tests/infra (skips where `weed` is not installed).
from tests.infra.conftest import s3_server  # noqa: E402, F401

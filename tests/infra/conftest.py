"""Real local services for tests: a Slurm with accounting and fake GPUs, an S3 server, a PostgreSQL,
and a headless Chromium to look at the Prefect UI with.

Each is started once per test session by the same functions as scripts/dev/local_*.py and
stopped, by its pid files, at the end. A machine without the programs skips these tests with
the install hint (.ci/run installs them first: scripts/dev/install_packages.sh).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

DEV_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "dev"
sys.path.insert(0, str(DEV_SCRIPTS))

from local_daemons import MissingPrerequisite  # noqa: E402
from local_postgres import PostgresServer, start_postgres, stop_postgres  # noqa: E402
from local_s3 import S3Server, start_s3, stop_s3  # noqa: E402
from local_slurm import SlurmCluster, start_slurm, stop_slurm  # noqa: E402

from tests.infra.chromium import start_chromium  # noqa: E402

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

#: Fake GPUs on the test cluster's node: enough for a job to ask for one and another to ask for two.
TEST_GPUS = 2
TEST_BUCKET = "nano3-test"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A one-node Slurm (partition `debug`, account `root`) whose node has TEST_GPUS fake GPUs."""
    folder = tmp_path_factory.mktemp("slurm")
    try:
        cluster = start_slurm(folder, gpus=TEST_GPUS, host_containers=True)
    except MissingPrerequisite as missing:
        pytest.skip(str(missing))
    try:
        yield cluster
    finally:
        stop_slurm(folder)


@pytest.fixture(scope="session")
def slurm_cluster_with_gpus(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The same cluster, named for tests that rely on its fake GPUs."""
    assert slurm_cluster.gpus > 0
    return slurm_cluster


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 endpoint with random keys and the bucket TEST_BUCKET."""
    folder = tmp_path_factory.mktemp("s3")
    try:
        server = start_s3(folder, f"test-{secrets.token_hex(4)}", secrets.token_hex(16), bucket=TEST_BUCKET)
    except MissingPrerequisite as missing:
        pytest.skip(str(missing))
    try:
        yield server
    finally:
        stop_s3(folder)


@contextlib.contextmanager
def own_postgres(prefix: str = "nano3-postgres-") -> Iterator[tuple[Path, PostgresServer]]:
    """A PostgreSQL in a folder of its own (its folder, to restart it from), removed afterwards.

    Not under pytest's temp folder: it is closed to others, and the server runs as `postgres`."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        try:
            server = start_postgres(folder)
        except MissingPrerequisite as missing:
            pytest.skip(str(missing))
        try:
            yield folder, server
        finally:
            stop_postgres(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with own_postgres() as (_, server):
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """`postgresql+asyncpg://…/prefect`, for PREFECT_API_DATABASE_CONNECTION_URL."""
    return postgres_server.url


@pytest.fixture
def chromium() -> Iterator[WebDriver]:
    """Headless Chromium through Selenium, a fresh profile per test."""
    try:
        driver = start_chromium()
    except MissingPrerequisite as missing:
        pytest.skip(str(missing))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """A Prefect server for the module's flows (and the subprocesses it starts): its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def cluster(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch, isolated: Path,
            request: pytest.FixtureRequest) -> SlurmCluster:
    """The cluster, as seen by a user whose shell has this project's environment active."""
    import os

    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)
    # sbatch passes the submitter's environment on: the job's `python` is this environment's.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # NeMo-Run runs sbatch/sacct through invoke, which mirrors stdin: give it a real (empty) one
    # instead of pytest's capture object, as a shell or a worker process would.
    devnull = open(os.devnull)  # noqa: SIM115 - closed at teardown
    request.addfinalizer(devnull.close)
    monkeypatch.setattr(sys, "stdin", devnull)
    from nemo_run.config import set_nemorun_home

    # Not below a folder named nemo_run: NeMo-Run rewrites that path component inside jobs.
    set_nemorun_home(str(isolated / "nemorun"))
    monkeypatch.setenv("NEMORUN_HOME", str(isolated / "nemorun"))
    return slurm_cluster

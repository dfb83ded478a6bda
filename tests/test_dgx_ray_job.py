"""A `ray` stage on DGX Cloud through NeMo-Run's DGXCloudRayJob, against a local stand-in for the
DGX Cloud (Run:AI) REST API that records every request.

DGX Cloud cannot run here; its API is HTTP, so NeMo-Run talks to a real HTTP server on this
machine and the exact requests it sends are pinned by tests/golden/ray_jobs/dgxcloud-requests.txt
(UPDATE_GOLDEN=1 to rewrite after review): the token, the data mover's copy of the code (the
files it ships listed), NeMo-Run's bootstrap script deployed to the PVC, and the distributed
workload. Then: the wait follows the workload's phases to its end; a rerun while it runs
re-attaches instead of creating another; cancelling suspends it.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from blocks.profiles import parse_profile
from tasks import ray_jobs
from tasks.artifacts import ArtifactStore
from tasks.job_config import JobConfig, build_job_config
from tasks.stages import PROJECT_ROOT
from tasks.submissions import cancel, job_info, open_experiment
from tasks.submit import submit_and_wait
from tests.conftest import assert_golden
from tests.test_stage_task import PRODUCE

RAY_PRODUCE = replace(PRODUCE, id="toy/ray-produce", artifact="toy-ray-numbers", launcher="ray")
SECRET = "dgx-client-secret-value"
HF_TOKEN = "hf-token-value-for-the-job"


@dataclass
class FakeDGXCloud:
    """Answers what NeMo-Run asks, as DGX Cloud does; `phases` are the workload's, in turn."""

    phases: list[str]
    requests: list[tuple[str, str, object]] = field(default_factory=list)
    suspended: bool = False
    url: str = ""

    def answer(self, method: str, path: str, body: object) -> tuple[int, object]:
        self.requests.append((method, path, body))
        if (method, path) == ("POST", "/token"):
            return 200, {"accessToken": "token-1"}
        if (method, path) == ("GET", "/org-unit/projects"):
            return 200, {"projects": [{"name": "other", "id": "p0", "clusterId": "c0"},
                                      {"name": "nano3", "id": "proj-1", "clusterId": "cluster-1"}]}
        if (method, path) == ("POST", "/workloads/workspaces"):
            return 202, {"workloadId": f"ws-{sum(1 for m, p, _ in self.requests if p == path)}"}
        if method == "GET" and path.startswith("/workloads/workspaces/"):
            return 200, {"actualPhase": "Completed"}
        if method == "DELETE" and path.startswith("/workloads/workspaces/"):
            return 200, {}
        if (method, path) == ("POST", "/workloads/distributed"):
            return 202, {"workloadId": "rayjob-1", "actualPhase": "Creating"}
        if (method, path) == ("GET", "/workloads/distributed/rayjob-1/suspend"):
            self.suspended = True
            return 200, {}
        if (method, path) == ("GET", "/workloads/distributed/rayjob-1"):
            if self.suspended:
                return 200, {"actualPhase": "Stopped"}
            return 200, {"actualPhase": self.phases.pop(0) if len(self.phases) > 1 else self.phases[0]}
        return 404, {"message": f"no {method} {path}"}

    def posted(self, path: str) -> list[object]:
        return [body for method, p, body in self.requests if method == "POST" and p == path]


@pytest.fixture
def api() -> Iterator[FakeDGXCloud]:
    fake = FakeDGXCloud(phases=["Pending", "Running", "Completed"])

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, answer = fake.answer(self.command, self.path.removeprefix("/api/v1"), body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _reply

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def nemorun_home(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from nemo_run.config import get_nemorun_home, set_nemorun_home

    # NeMo-Run's packagers run tar through invoke, which mirrors stdin: give it a real (empty) one.
    devnull = open(os.devnull)  # noqa: SIM115 - closed below
    monkeypatch.setattr(sys, "stdin", devnull)

    previous = get_nemorun_home()
    set_nemorun_home(str(isolated / "nemorun"))
    try:
        yield isolated / "nemorun"
    finally:
        set_nemorun_home(previous)
        devnull.close()


def dgx_job(api: FakeDGXCloud) -> JobConfig:
    section = {
        "executor": "dgxcloud", "base_url": api.url, "app_id": "client-1", "app_secret": SECRET,
        "project_name": "nano3", "container_image": "nvcr.io/nvidia/nemo-rl:v0.4.0.nemotron_3_nano",
        "pvc_nemo_run_dir": "/pvc/nemo_run", "pvcs": [{"claimName": "team-pvc", "path": "/pvc"}],
        "nodes": 2, "gpus_per_node": 8, "env_vars": {"HF_TOKEN": HF_TOKEN},
        # Just the toy stage: NeMo-Run's data mover copies it in one request.
        "packager": "pattern", "include_pattern": [str(PROJECT_ROOT / "tests" / "toy_recipes" / "produce")],
        "relative_path": [str(PROJECT_ROOT)],
    }
    profile = parse_profile(section, file="env.toml", section="dgx")
    return build_job_config(RAY_PRODUCE, "tiny", profile=profile, profile_name="dgx", profile_origin="test")


def submit(job: JobConfig, store: ArtifactStore, *, detached: bool, key: str = "c" * 64):  # noqa: ANN201
    work = Path(store.root, "_work", key)
    return submit_and_wait(job, resolved_config="run: {}\n", cache_key=key, work_dir=str(work), store=store,
                           wandb=None, detached=detached, on_line=print)


def readable(api: FakeDGXCloud, name: str, work: Path) -> str:
    """The requests that change something, in order, their encoded payloads decoded."""
    lines = []
    for method, path, body in api.requests:
        if method == "GET" or path == "/token":
            continue
        text = json.dumps(body, indent=2, sort_keys=True) if body is not None else ""
        lines.append(f"{method} {path}")
        for blob in re.findall(r"echo ([A-Za-z0-9+/=]{40,}) \| base64 -d", text):
            raw = base64.b64decode(blob)
            try:
                with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                    shown = "<tar.gz of " + ", ".join(sorted(m.name for m in tar.getmembers() if m.isfile())) + ">"
            except tarfile.ReadError:
                shown = "<gzip of the script below>"
                lines.append("--- script\n" + gzip.decompress(raw).decode().rstrip() + "\n---")
            text = text.replace(blob, shown)
        lines.append(text)
    text = "\n".join(lines).replace(name, "<name>").replace(api.url, "<api>") + "\n"
    return text.replace(str(work), "<work>")


def test_a_dgx_ray_stage_sends_these_requests_and_is_followed_to_its_end(
    api: FakeDGXCloud, isolated: Path, nemorun_home: Path
) -> None:
    store = ArtifactStore(str(isolated / "store"))
    job = dgx_job(api)
    assert ray_jobs.uses_ray_job(job) and job.profile.ray_job == "DGXCloudRayJob"
    outcome = submit(job, store, detached=False)
    assert outcome.state == "SUCCEEDED" and outcome.job_id == "rayjob-1" and not outcome.reattached
    name = ray_jobs.job_name(job, "c" * 64, 1)
    assert len(name.replace("toy-ray-produce", "data_prep-pretrain")) <= 35, "DGX Cloud would cut the longest"
    record = store.read_record("c" * 64)
    assert record is not None and record.ray_job == "DGXCloudRayJob" and record.experiment_id == name
    assert record.job_id == "rayjob-1"
    (workload,) = api.posted("/workloads/distributed")
    assert workload["projectId"] == "proj-1" and workload["spec"]["numWorkers"] == 2
    assert {"name": "HF_TOKEN", "value": HF_TOKEN} in workload["spec"]["environmentVariables"]
    text = readable(api, name, isolated)
    assert f"python /pvc/nemo_run/<name>/code/tests/toy_recipes/produce/produce.py --config " in text
    # The job's secret goes in the workload's env, and nowhere else: not the record, not the plan.
    assert store.fs.cat_file(store.url("_runs", "c" * 64 + ".json")).decode().count(HF_TOKEN) == 0
    assert_golden("ray_jobs/dgxcloud-requests.txt", text.replace(HF_TOKEN, "<HF_TOKEN>").replace(SECRET, "<secret>"))
    # The token was asked with the profile's secret, sent to DGX Cloud only.
    assert api.posted("/token")[0] == {"grantType": "client_credentials", "clientId": "client-1", "clientSecret": SECRET}


def test_a_running_dgx_ray_job_is_reattached_then_cancelled(api: FakeDGXCloud, isolated: Path,
                                                            nemorun_home: Path) -> None:
    api.phases = ["Running"]
    store = ArtifactStore(str(isolated / "store"))
    job = dgx_job(api)
    first = submit(job, store, detached=True)
    assert first.state == "RUNNING" and not first.reattached
    second = submit(job, store, detached=True)
    assert second.reattached and second.job_id == first.job_id == "rayjob-1"
    assert len(api.posted("/workloads/distributed")) == 1, "no second workload"
    record = store.read_record("c" * 64)
    assert record is not None and record.attempt == 1
    run = open_experiment(record)
    assert job_info(run).state == "RUNNING"
    assert cancel(run).state == "CANCELLED" and api.suspended

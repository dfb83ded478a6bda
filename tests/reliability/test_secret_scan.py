"""Secret scan: distinct secrets planted in every place that holds one, then dry-runs, a real
run and a failing run, then every file the tool wrote, every log, every Prefect record and the
W&B offline folder searched for them.

Where the secrets are: env.toml profile fields (a local profile's env_vars, a Slurm profile's
SSH passphrase and env_vars), [wandb] api_key, [artifacts] secret_access_key (of the real local
S3 server that holds the store), a `${oc.env:...}` reference to a process env var, and
WANDB_API_KEY in the process environment. The run happens as a user's would: its own HOME,
working folder and TMPDIR, all under the sandbox that is scanned, and the real run checks that
the job did receive its secret (else finding none would prove nothing).
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

from sqlalchemy.engine import make_url

from tasks.artifacts import ArtifactStore
from tests.reliability.runs import Sandbox


def planted(kind: str) -> str:
    return f"PLANTED-{kind}-{secrets.token_hex(6)}"


def files_holding(needles: dict[str, str], root: Path, skip: set[Path]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path not in skip:
            data = path.read_bytes()
            found += [f"{kind} in {path}" for kind, needle in needles.items() if needle.encode() in data]
    return found


def prefect_records(needles: dict[str, str]) -> tuple[list[str], int, int, int]:
    """Search every log line and every artifact the Prefect server holds, through its API, and
    its database files themselves (flow run parameters, states, events).
    Returns (hits, log lines, artifacts, database bytes searched)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import LogSort
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    hits = []
    with get_client(sync_client=True) as client:
        logs: list[str] = []
        while batch := client.read_logs(limit=200, offset=len(logs), sort=LogSort.TIMESTAMP_ASC):
            logs += [log.message for log in batch]
        artifacts: list[str] = []
        while batch := client.read_artifacts(limit=200, offset=len(artifacts)):
            artifacts += [str(a.data) + str(a.description) for a in batch]
    for kind, needle in needles.items():
        hits += [f"{kind} in a Prefect log line" for line in logs if needle in line]
        hits += [f"{kind} in a Prefect artifact" for text in artifacts if needle in text]
    database = Path(make_url(PREFECT_API_DATABASE_CONNECTION_URL.value()).database)
    searched = 0
    for path in database.parent.glob(f"{database.name}*"):  # the database, its WAL and journal
        data = path.read_bytes()
        searched += len(data)
        hits += [f"{kind} in {path}" for kind, needle in needles.items() if needle.encode() in data]
    return hits, len(logs), len(artifacts), searched


def test_no_planted_secret_anywhere_after_dry_runs_a_run_and_a_failing_run(prefect_api: str, isolated: Path,
                                                                           s3_server) -> None:  # noqa: ANN001
    needles = {
        "wandb api_key": planted("wandb"),
        "local env_vars": planted("hf"),
        "oc.env reference": planted("interp"),
        "slurm passphrase": planted("pass"),
        "slurm env_vars": planted("slurm-hf"),
        "process WANDB_API_KEY": planted("proc"),
        "S3 secret_access_key": s3_server.secret_key,
    }
    sandbox = Sandbox(isolated, prefect_api)
    root = f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}"
    work = isolated / "work"
    work.mkdir(exist_ok=True)
    env_toml = work / "env.toml"
    env_toml.write_text(f"""
[wandb]
project = "nano3-secret-scan"
mode = "offline"
api_key = "{needles['wandb api_key']}"

[artifacts]
root = "{root}"
endpoint_url = "{s3_server.endpoint}"
access_key_id = "{s3_server.access_key}"
secret_access_key = "{needles['S3 secret_access_key']}"

[local]
executor = "local"
env_vars = {{ HF_TOKEN = "{needles['local env_vars']}", OTHER_TOKEN = "${{oc.env:NANO3_PLANTED_VAR}}" }}

[cluster]
executor = "slurm"
account = "acct"
partition = "batch"
tunnel = "ssh"
host = "login"
user = "me"
remote_job_dir = "/lustre/me"
identity_passphrase = "{needles['slurm passphrase']}"
env_vars = {{ HF_TOKEN = "{needles['slurm env_vars']}" }}
""")
    (isolated / "tmp").mkdir()
    extra: dict[str, str | None] = {"NANO3_PLANTED_VAR": needles["oc.env reference"], "WANDB_API_KEY": needles["process WANDB_API_KEY"],
             "TMPDIR": str(isolated / "tmp"), "NANO3_SCRATCH": str(isolated / "scratch")}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        extra[name] = None  # the store's credentials come from env.toml only

    import subprocess
    import sys

    for args in (["-d"], ["-r", "cluster", "-d"], ["-b", "cluster", "-d", "--stages", "sft"]):
        dry = subprocess.run([sys.executable, "-m", "flows.nano3", *args], cwd=work, env=sandbox.env(**extra),
                             capture_output=True, text=True, timeout=300)
        assert dry.returncode == 0, dry.stderr
        (isolated / "dry-run.log").open("a").write(dry.stdout + dry.stderr)

    code, results = sandbox.run("toy/train:fail_at=2", **extra)
    assert code == 0, sandbox.log()[-3000:]
    assert [r["status"] for r in results] == ["ran", "ran", "ran"]
    code, _ = sandbox.run("toy/consume:factor=null", **extra)
    assert code != 0, "a job that fails on every attempt fails the run"
    assert "without a manifest" in sandbox.log()

    from blocks.settings import ArtifactsConfig
    from pydantic import SecretStr
    from tasks.artifacts import open_store

    store: ArtifactStore = open_store(ArtifactsConfig(root=root, endpoint_url=s3_server.endpoint,
                                                      access_key_id=s3_server.access_key,
                                                      secret_access_key=SecretStr(s3_server.secret_key)))
    produced = store.resolve("toy-numbers:latest")
    manifest = store.read_manifest(produced.uri)
    assert manifest is not None and manifest.metadata["hf_token_length"] == len(needles["local env_vars"]), \
        "the job received the profile's secret"
    wandb_runs = list((work / ".nano3" / "wandb").rglob("run-*.wandb"))
    assert len(wandb_runs) >= 3, "the W&B offline folder was written and is part of the scan"
    assert list((isolated / "nemorun").rglob("*")), "NeMo-Run's experiment folders are part of the scan"

    hits = files_holding(needles, isolated, skip={env_toml})
    store.fs.invalidate_cache()
    objects = store.fs.find(store._path())
    assert objects
    hits += [f"{kind} in s3://{path}" for path in objects for kind, needle in needles.items()
             if needle.encode() in store.fs.cat_file(path)]
    prefect_hits, logs, artifacts, database_bytes = prefect_records(needles)
    assert logs > 50 and artifacts > 5 and database_bytes > 0, "the runs' logs and artifacts reached Prefect"
    # The scan finds what is there: env.toml, the one file that holds the secrets by design.
    in_env_toml = {hit.split(" in ")[0] for hit in files_holding(needles, work, skip=set())}
    assert in_env_toml == set(needles) - {"oc.env reference", "process WANDB_API_KEY"}
    assert hits + prefect_hits == []

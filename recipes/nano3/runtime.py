"""What every nano3 recipe shares: reading the resolved config, progress lines, checkpoints, manifest.

Recipes run in another process, container or node, so this module depends on nothing of the
orchestrator: only the command line (`--config resolved.yaml`), the files under `run.work_dir`
and `run.output_dir`, and `output_dir/manifest.json`, written last and atomically.

The resolved config's `run` block, as the task writes it:

    run:
      stage: pretrain
      output_dir: /store/pretrain/<cache_key>      # final files; manifest.json marks it done
      work_dir: /store/_work/pretrain/<cache_key>  # checkpoints and scratch, kept across restarts
      seed: 1234
      inputs:
        data: {name: nano3-pretrain-data, version: v1, digest: sha256:..., type: binidx, path: /store/...}

Remote stores (`s3://bucket/prefix/...` or any other fsspec URL): the recipe still reads and
writes local files only, and this module moves them.

- An input whose path is a URL is downloaded, before the recipe starts, to
  `<scratch>/inputs/<artifact digest>/`; its manifest must carry the digest the orchestrator
  resolved and every file must match its sha256 and size. A folder already downloaded for that
  digest is reused.
- A URL output_dir is staged in `<scratch>/staging/<bucket>/<path>/`; finish() uploads every file
  and manifest.json last, so a manifest in the store still means "finished".
- A URL work_dir (the orchestrator gives a local one for remote stores) becomes
  `<scratch>/work/<bucket>/<path>/`: checkpoints stay on the job's file system.

A local job (NANO3_ORCHESTRATOR_PID set) holds a shared flock on `<work_dir>/job.lock` from
start() to its end, and stops when its orchestrator is gone: an orchestrator waits for that lock
before it submits another job for the same work folder (tasks.artifacts.ArtifactStore.wait_for_jobs).

`<scratch>` is $NANO3_SCRATCH, else ~/.cache/nano3. Credentials come from the job's environment
only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for S3-compatible servers), which
the orchestrator passes as secret env: never in the config.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipes.nano3.manifest import MANIFEST_NAME, FileEntry, InputRef, Manifest, Report
from recipes.nano3.outage import through_outages

PROGRESS_PREFIX = "NANO3_PROGRESS "
CHECKPOINT_DONE = "COMPLETE"
#: Set by the orchestrator for jobs on this machine: the job ends when that process is gone.
ORCHESTRATOR_PID_VAR = "NANO3_ORCHESTRATOR_PID"
#: Local folder for downloaded inputs, staged outputs and the work dirs of remote stores.
SCRATCH_VAR = "NANO3_SCRATCH"
DEFAULT_SCRATCH = "~/.cache/nano3"
#: The S3 endpoint for S3-compatible servers (read by botocore too; passed explicitly to s3fs).
ENDPOINT_VAR = "AWS_ENDPOINT_URL"
#: In a local job's work folder: held (shared) by every process of the job for its whole life.
JOB_LOCK = "job.lock"


@dataclass(frozen=True)
class RecipeContext:
    config: DictConfig
    config_path: Path
    stage: str
    output_dir: Path
    work_dir: Path
    inputs: dict[str, InputRef]
    seed: int
    #: Where finish() uploads output_dir to, when run.output_dir is a URL (output_dir is then local staging).
    output_url: str | None = None
    #: Local copies of inputs whose path is a URL, by input name.
    local_inputs: dict[str, Path] = field(default_factory=dict)

    def input_path(self, name: str) -> Path:
        if name not in self.inputs:
            raise SystemExit(f"error: config has no input '{name}' (run.inputs.{name}); inputs: {sorted(self.inputs)}")
        return self.local_inputs.get(name) or Path(self.inputs[name].path)

    def checked_input(self, name: str, files: tuple[str, ...], kind: str) -> Path:
        """Input `name`'s folder, holding `files` (what a `kind` artifact has that the recipe reads):
        one error naming the input and the first thing missing, before any slow import."""
        folder = self.input_path(name)
        if not folder.is_dir():
            raise SystemExit(f"error: input '{name}' at {folder} does not exist")
        missing = [file for file in files if not (folder / file).is_file()]
        if missing:
            raise SystemExit(f"error: input '{name}' at {folder} has no {missing[0]}: expected a {kind} artifact")
        return folder


def start(argv: list[str] | None = None) -> RecipeContext:
    """Parse `--config`, make the folders, seed every RNG, and return what the recipe needs."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    parser.add_argument("--config", required=True, type=Path, help="The resolved config (YAML).")
    args = parser.parse_args(argv)
    cfg = OmegaConf.load(args.config)
    assert isinstance(cfg, DictConfig)
    run = cfg.get("run") or {}
    missing = [k for k in ("output_dir", "work_dir") if k not in run]
    if missing:
        raise SystemExit(f"error: {args.config}: run.{missing[0]} is not set (the orchestrator resolves it)")
    inputs = {
        name: InputRef.model_validate(OmegaConf.to_container(ref, resolve=True))
        for name, ref in (run.get("inputs") or {}).items()
    }
    work_dir = local_work_dir(str(run.work_dir))
    work_dir.mkdir(parents=True, exist_ok=True)
    # First, before the seconds that importing torch takes: a job whose orchestrator is already
    # gone must not do any work, and the orchestrator's rerun must see this job as running.
    hold_job_lock(work_dir)
    seed = int(run.get("seed", cfg.get("seed", 1234)))
    seed_everything(seed)
    output_url = str(run.output_dir) if is_url(str(run.output_dir)) else None
    output_dir = scratch_path("staging", output_url) if output_url else Path(run.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    local_inputs = {name: fetch_input(name, ref) for name, ref in inputs.items() if is_url(ref.path)}
    return RecipeContext(
        config=cfg,
        config_path=args.config,
        stage=str(run.get("stage", "")),
        output_dir=output_dir,
        work_dir=work_dir,
        inputs=inputs,
        seed=seed,
        output_url=output_url,
        local_inputs=local_inputs,
    )


# --- remote stores ------------------------------------------------------------------------------


def is_url(path: str) -> bool:
    """A remote location (`s3://…`); plain paths and `file://` URLs are local."""
    return "://" in path and not path.startswith("file://")


def scratch_root() -> Path:
    return Path(os.environ.get(SCRATCH_VAR) or DEFAULT_SCRATCH).expanduser()


def scratch_path(kind: str, url: str) -> Path:
    """The local folder standing for `url`: `<scratch>/<kind>/<bucket>/<path>`."""
    rest = url.split("://", 1)[1].strip("/")
    parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
    return scratch_root().joinpath(kind, *parts)


def local_work_dir(work_dir: str) -> Path:
    """The folder a job keeps its checkpoints in: run.work_dir, or its scratch stand-in for a URL.

    The orchestrator computes the same folder to find a local job's lock (job.lock)."""
    if is_url(work_dir):
        return scratch_path("work", work_dir)
    return Path(work_dir.removeprefix("file://"))


def remote_fs(url: str):  # noqa: ANN201 - fsspec.AbstractFileSystem
    """(file system, path) for `url`, with the credentials of the job's environment."""
    import fsspec

    options: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")) and os.environ.get(ENDPOINT_VAR):
        options["client_kwargs"] = {"endpoint_url": os.environ[ENDPOINT_VAR]}
    return fsspec.core.url_to_fs(url, **options)


def fetch_input(name: str, ref: InputRef) -> Path:
    """Download input `name` (an artifact folder at a URL) and check it against its manifest.

    The copy is keyed by the artifact's digest, so it is reused by every later stage and job that
    consumes the same content; it appears under its final name only once complete.
    """
    dest = scratch_root() / "inputs" / ref.digest.removeprefix("sha256:")
    if (dest / MANIFEST_NAME).is_file():
        return dest
    fs, base = remote_fs(ref.path)
    label = f"input '{name}' ({ref.name}:{ref.version})"
    try:
        manifest = Manifest.model_validate_json(
            through_outages(lambda: fs.cat_file(f"{base}/{MANIFEST_NAME}"), what=f"{label} manifest", tell=_say)
        )
    except FileNotFoundError:
        raise SystemExit(f"error: {label}: no {MANIFEST_NAME} at {ref.path}") from None
    if manifest.digest != ref.digest:
        raise SystemExit(f"error: {label}: {ref.path} holds {manifest.digest}, the orchestrator resolved {ref.digest}")
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for entry in manifest.files:
            target = tmp / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            through_outages(
                lambda: fs.get_file(f"{base}/{entry.path}", str(target)), what=f"{label} {entry.path}", tell=_say
            )
            if target.stat().st_size != entry.size or sha256_file(target) != entry.sha256:
                raise SystemExit(f"error: {label}: file {entry.path} does not match its manifest (corrupted in the store?)")
        (tmp / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
        try:
            os.rename(tmp, dest)
        except OSError:  # another job downloaded the same digest meanwhile
            if not (dest / MANIFEST_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"input {name}: {ref.path} -> {dest} ({len(manifest.files)} files, verified)", flush=True)
    return dest


def upload_output(ctx: RecipeContext, manifest: Manifest) -> None:
    """Copy the staged outputs to ctx.output_url, manifest.json last: its presence means finished.

    Each file is tried again through an outage of the store (recipes.nano3.outage): a restart
    of the object store delays the upload instead of failing the job."""
    assert ctx.output_url is not None
    fs, base = remote_fs(ctx.output_url)
    base = base.rstrip("/")
    for name in [entry.path for entry in manifest.files] + [MANIFEST_NAME]:
        source, target = str(ctx.output_dir / name), f"{base}/{name}"
        through_outages(lambda: fs.put_file(source, target), what=f"upload of {name}", tell=_say)


def _say(line: str) -> None:
    print(line, flush=True)


# --- local jobs and their orchestrator --------------------------------------------------------

#: The open job.lock of this process: kept open, so locked, until the process ends.
_job_lock_fd: int | None = None


def process_alive(pid: int) -> bool:
    """Whether process `pid`, which started before this one (a job's orchestrator, a server's
    supervisor), is still running.

    Not a zombie (a killed process that its parent has not reaped yet still answers
    kill(pid, 0)), and started no later than this process (a pid handed to another process since
    is not the one meant). Without /proc: kill(pid, 0).
    """
    try:
        mine = Path("/proc/self/stat").read_text()
    except OSError:  # no /proc on this system
        return _signalable(pid)
    try:
        theirs = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone
        return False
    # Fields after the command name (which may hold spaces and parentheses): state is the 3rd
    # field of the line, the start time (clock ticks since boot) the 22nd.
    their_fields = theirs.rsplit(")", 1)[1].split()
    my_fields = mine.rsplit(")", 1)[1].split()
    if their_fields[0] in ("Z", "X"):
        return False
    return int(their_fields[19]) <= int(my_fields[19])


def _signalable(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hold_job_lock(work_dir: Path) -> None:
    """A local job: lock `work_dir/job.lock` for the rest of this process's life, then stop at
    once if the orchestrator that started it is gone, else watch it.

    The lock is shared (the ranks torchrun starts all hold it) and the kernel drops it when the
    process ends, SIGKILL included. The orchestrator takes it exclusively before it submits a job
    for this work folder, so it waits for the end of every job still running there; a job of a
    killed orchestrator that takes the lock after that wait finds its orchestrator gone here and
    does nothing. A job on a scheduler (no NANO3_ORCHESTRATOR_PID) is left alone: the rerun
    re-attaches to it through its submission record.
    """
    global _job_lock_fd
    pid = os.environ.get(ORCHESTRATOR_PID_VAR)
    if not pid:
        return
    first = _job_lock_fd is None
    if first:
        fd = os.open(work_dir / JOB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an orchestrator checks for running jobs
        # Who holds it, for the orchestrator's "waiting for the previous job" message.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
        _job_lock_fd = fd
    if not process_alive(int(pid)):
        print(f"orchestrator {pid} is gone; not starting (its rerun submits the stage again)", flush=True)
        os._exit(143)
    if first:
        watch_orchestrator()


def watch_orchestrator(interval: float = 1.0) -> None:
    """A local job must not outlive the orchestrator that started it.

    If the orchestrator is killed, its rerun submits the stage again and resumes from the last
    checkpoint; an orphan still writing to the same work folder would race that new job (the
    rerun waits for this job's job.lock, so it waits until this thread has stopped the job).
    """
    pid = os.environ.get(ORCHESTRATOR_PID_VAR)
    if not pid:
        return

    def watch() -> None:
        while True:
            time.sleep(interval)
            if not process_alive(int(pid)):
                print(f"orchestrator {pid} is gone; stopping (the rerun resumes from the last checkpoint)", flush=True)
                os._exit(143)

    threading.Thread(target=watch, name="nano3-orchestrator-watch", daemon=True).start()


def seed_everything(seed: int) -> None:
    """Seed every RNG a recipe may use, torch included even if not imported yet (≈ 3 s): model
    initialisation must not depend on import order."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def progress(step: int, total: int, **metrics: float | int | str) -> None:
    """One machine-readable line per update; the orchestrator turns them into progress bars."""
    line = {"step": step, "total": total, "time": round(time.time(), 3), **metrics}
    print(PROGRESS_PREFIX + json.dumps(line), flush=True)


# --- checkpoints -----------------------------------------------------------------------------


def checkpoint_dir(work_dir: Path, step: int) -> Path:
    return work_dir / "checkpoints" / f"step_{step:08d}"


def mark_checkpoint_complete(path: Path) -> None:
    """Write the marker last: a checkpoint cut short by a crash has none and is never resumed from."""
    (path / CHECKPOINT_DONE).write_text(str(int(time.time())))


def latest_checkpoint(work_dir: Path) -> tuple[int, Path] | None:
    root = work_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(
        (int(p.name.removeprefix("step_")), p)
        for p in root.glob("step_*")
        if (p / CHECKPOINT_DONE).is_file() and p.name.removeprefix("step_").isdigit()
    )
    return done[-1] if done else None


def prune_checkpoints(work_dir: Path, keep: int = 2) -> None:
    root = work_dir / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / CHECKPOINT_DONE).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --- the manifest ------------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def finish(
    ctx: RecipeContext,
    artifact_type: str,
    *,
    metrics: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    report: Report | None = None,
) -> Manifest:
    """Digest every file under output_dir and write manifest.json atomically: the stage is done."""
    files = [
        FileEntry(path=p.relative_to(ctx.output_dir).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
        for p in sorted(ctx.output_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(f".{MANIFEST_NAME}")
    ]
    manifest = Manifest(
        type=artifact_type,
        stage=ctx.stage,
        files=files,
        metrics=metrics or {},
        metadata=metadata or {},
        inputs=list(ctx.inputs.values()),
        report=report,
    )
    tmp = ctx.output_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2))
    os.replace(tmp, ctx.output_dir / MANIFEST_NAME)
    if ctx.output_url:
        upload_output(ctx, manifest)
        shutil.rmtree(ctx.output_dir, ignore_errors=True)  # the store has it now; checkpoints stay in work_dir
        print(f"manifest: {ctx.output_url}/{MANIFEST_NAME} ({len(files)} files, uploaded)", flush=True)
        return manifest
    print(f"manifest: {ctx.output_dir / MANIFEST_NAME} ({len(files)} files)", flush=True)
    return manifest

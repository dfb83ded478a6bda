"""The artifact store: content-addressed stage outputs, a versioned registry, submission records.

Layout under the store's root (any fsspec URL; a local folder by default, `s3://…` with s3fs):

    <root>/<stage>/<cache_key>/…            a stage's outputs; manifest.json, written last, marks it done
    <root>/_work/<stage>/<cache_key>/…      checkpoints and scratch of a stage still running
    <root>/_work/<stage>/<cache_key>/job.lock   held by the local job running there (wait_for_jobs)
    <root>/_registry/<name>/v<N>.json       one file per published version, never rewritten
    <root>/_registry/<name>/latest.json     the alias, replaced atomically
    <root>/_runs/<cache_key>.json           the submission record: which job is computing that key

Versions are created with an exclusive create (a hard link on local disks, a conditional PUT on
S3: two publishers race for v<N>; the loser takes v<N+1>), so concurrent runs never clobber each
other.

On a remote store (`s3://…`) the work folders are not in the store: checkpoints stay on the job's
file system, under `$NANO3_SCRATCH/work/<bucket>/<prefix>/_work/<stage>/<cache_key>` (default
scratch ~/.cache/nano3), so a resubmitted job on the same file system resumes from them. The
store's credentials reach jobs as secret env vars (job_secret_env), never in their config.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel, Field

from blocks.errors import ConfigError
from blocks.settings import ArtifactsConfig
from recipes.nano3.manifest import MANIFEST_NAME, Manifest, Report
from recipes.nano3.outage import through_outages
from recipes.nano3.runtime import ENDPOINT_VAR, JOB_LOCK, local_work_dir, scratch_path
from tasks.refs import REF_PATTERN

#: Artifact types whose .jsonl files are records, one JSON object per line (check_input).
RECORD_TYPES = ("raw_jsonl", "training_jsonl")


#: One move of an alias: `_registry/<name>/aliases/<alias>/m<N>.json` (tasks.aliases).
_ALIAS_MOVE_FILE = re.compile(r"m(\d+)\.json")


class ArtifactError(Exception):
    """An artifact is missing, of the wrong type, or its files do not match its manifest."""


class StoreFull(ArtifactError):
    """The store's device (or quota) is full. Not retried: waiting frees no space."""


#: Error numbers of a write that found no room: the device is full, or the user's quota is.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space_left(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in NO_SPACE


class ArtifactVersion(BaseModel):
    name: str
    version: str
    type: str
    digest: str
    uri: str
    stage: str
    cache_key: str
    created: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    #: The recipe's table and charts (recipes.nano3.manifest.Report), where it wrote one.
    report: Report | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class SubmissionRecord(BaseModel):
    """Written before waiting on a job, so a rerun after a crash can find it instead of resubmitting."""

    cache_key: str
    stage: str
    executor: str
    experiment_id: str
    job_id: str | None = None
    submitted: str
    attempt: int = 1
    #: A NeMo-Run Ray job (tasks.ray_jobs): its class (SlurmRayJob, DGXCloudRayJob); `experiment_id`
    #: is then the job's name, `job_id` the Slurm job or DGX Cloud workload. None for an Experiment.
    ray_job: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ArtifactStore:
    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        fs, self._root_path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self.is_local = fs.protocol in ("file", "local") or "file" in fs.protocol
        # A remote store may restart under a run: every call to it rides out the outage.
        self.fs = fs if self.is_local else _ThroughOutages(fs)

    def __repr__(self) -> str:  # never the storage options: they hold credentials
        return f"ArtifactStore({self.root!r})"

    # --- paths ----------------------------------------------------------------------------
    def url(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _path(self, *parts: str) -> str:
        return "/".join([self._root_path.rstrip("/"), *parts])

    def output_url(self, stage_slug: str, cache_key: str) -> str:
        return self.url(stage_slug, cache_key)

    def work_url(self, stage_slug: str, cache_key: str) -> str:
        """Checkpoints and scratch: in the store if it is a folder, else on the local file system."""
        if self.is_local:
            return self.url("_work", stage_slug, cache_key)
        return str(scratch_path("work", self.url("_work", stage_slug, cache_key)))

    def _fs_path(self, url: str) -> tuple[Any, str]:
        """The file system and path of a URL: this store's own (with its credentials) when under its root."""
        if url == self.root or url.startswith(self.root + "/"):
            return self.fs, self._path(*[p for p in url[len(self.root):].split("/") if p])
        if "://" in url:
            return fsspec.core.url_to_fs(url)
        return self.fs, url

    def _fresh(self, path: str) -> None:
        """Other processes write the store: never answer from a remote file system's listing cache."""
        if not self.is_local:
            self.fs.invalidate_cache(path)

    def job_secret_env(self) -> dict[str, str]:
        """The store's credentials as the env vars a job's s3fs/botocore reads (passed as secret env)."""
        if not self.root.startswith(("s3://", "s3a://")):
            return {}
        options = self.storage_options
        env = {
            "AWS_ACCESS_KEY_ID": options.get("key"),
            "AWS_SECRET_ACCESS_KEY": options.get("secret"),
            ENDPOINT_VAR: (options.get("client_kwargs") or {}).get("endpoint_url") or options.get("endpoint_url"),
            "AWS_DEFAULT_REGION": (options.get("client_kwargs") or {}).get("region_name"),
        }
        return {name: str(value) for name, value in env.items() if value}

    # --- manifests ------------------------------------------------------------------------
    def read_manifest(self, output_url: str) -> Manifest | None:
        fs, p = self._fs_path(f"{output_url}/{MANIFEST_NAME}")
        if fs is self.fs:
            self._fresh(p)
        if not fs.exists(p):
            return None
        return Manifest.model_validate_json(fs.cat_file(p))  # one call: retried whole through an outage

    def verify(self, name: str, output_url: str, manifest: Manifest) -> None:
        """Recompute every file's sha256; the first mismatch is an error naming artifact and file."""
        fs, base = self._fs_path(output_url)
        if fs is self.fs:
            self._fresh(base)
        for entry in manifest.files:
            path = f"{base}/{entry.path}"
            if not fs.exists(path):
                raise ArtifactError(f"artifact {name}: file {entry.path} is missing from {output_url}")
            digest = hashlib.sha256()
            with fs.open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            if digest.hexdigest() != entry.sha256:
                raise ArtifactError(
                    f"artifact {name}: file {entry.path} is corrupted "
                    f"(sha256 {digest.hexdigest()[:12]}…, manifest says {entry.sha256[:12]}…)"
                )

    def check_input(self, version: ArtifactVersion) -> None:
        """Before a stage consumes a published version: its manifest is the one the registry
        recorded, every file matches its sha256, and the JSONL files of record types hold one
        JSON object per line and are not empty. The recipe would otherwise read a corrupted or
        truncated file, or fail halfway through a job on a line it cannot parse."""
        manifest = self.read_manifest(version.uri)
        if manifest is None:
            raise ArtifactError(f"artifact {version.ref}: no manifest at {version.uri}")
        if manifest.digest != version.digest:
            raise ArtifactError(
                f"artifact {version.ref}: {version.uri} holds {manifest.digest[:19]}…, the registry recorded {version.digest[:19]}…"
            )
        self.verify(version.ref, version.uri, manifest)
        if version.type not in RECORD_TYPES:
            return
        fs, base = self._fs_path(version.uri)
        for entry in manifest.files:
            if not entry.path.endswith(".jsonl"):
                continue
            if entry.size == 0:
                raise ArtifactError(f"artifact {version.ref}: file {entry.path} is empty")
            with fs.open(f"{base}/{entry.path}", "rb") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError as exc:
                        raise ArtifactError(
                            f"artifact {version.ref}: {entry.path} line {number} is not JSON ({str(exc).split(':')[0]})"
                        ) from None
                    if not isinstance(record, dict):
                        raise ArtifactError(f"artifact {version.ref}: {entry.path} line {number} is not a JSON object")

    # --- registry -------------------------------------------------------------------------
    def _versions(self, name: str) -> list[int]:
        folder = self._path("_registry", name)
        self._fresh(folder)
        if not self.fs.exists(folder):
            return []
        found = []
        for entry in self.fs.ls(folder, detail=False):
            match = re.fullmatch(r"v(\d+)\.json", Path(entry).name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def _read_json(self, path: str) -> dict[str, Any] | None:
        self._fresh(path)
        if not self.fs.exists(path):
            return None
        return json.loads(self.fs.cat_file(path))

    def version(self, name: str, version: str) -> ArtifactVersion | None:
        data = self._read_json(self._path("_registry", name, f"{version}.json"))
        return ArtifactVersion.model_validate(data) if data else None

    def latest(self, name: str) -> ArtifactVersion | None:
        data = self._read_json(self._path("_registry", name, "latest.json"))
        return ArtifactVersion.model_validate(data) if data else None

    def find(self, ref: str, *, expected_type: str | None = None) -> ArtifactVersion | None:
        """What `ref` names (`name`, `name:latest`, `name:v3`, `name:production`), None where it names nothing."""
        match = REF_PATTERN.match(ref.strip())
        if not match:
            raise ConfigError(f"artifact reference {ref!r} is not name[:latest|:vN|:alias]")
        name, version = match.group("name"), match.group("version") or "latest"
        if version == "latest":
            found = self.latest(name)
        elif re.fullmatch(r"v\d+", version):
            found = self.version(name, version)
        else:
            history = self.alias_moves(name, version)
            found = self.version(name, history[-1]["version"]) if history else None
        if found is not None and expected_type and found.type != expected_type:
            raise ArtifactError(f"artifact {found.ref} is of type {found.type}, expected {expected_type}")
        return found

    def alias_folder(self, name: str, alias: str) -> str:
        return self._path("_registry", name, "aliases", alias)

    def alias_moves(self, name: str, alias: str) -> list[dict[str, Any]]:
        """The moves of an alias (tasks.aliases), oldest first: its target is the newest's version."""
        folder = self.alias_folder(name, alias)
        self._fresh(folder)
        if not self.fs.exists(folder):
            return []
        numbers = sorted(
            int(match.group(1)) for entry in self.fs.ls(folder, detail=False)
            if (match := _ALIAS_MOVE_FILE.fullmatch(Path(entry).name))
        )
        found = (self._read_json(f"{folder}/m{number}.json") for number in numbers)
        return [data for data in found if data]

    def resolve(self, ref: str, *, expected_type: str | None = None) -> ArtifactVersion:
        """As find, but a reference that names nothing is an error that lists what there is."""
        found = self.find(ref, expected_type=expected_type)
        if found is None:
            match = REF_PATTERN.match(ref.strip())
            assert match is not None
            name, version = match.group("name"), match.group("version") or "latest"
            known = self._versions(name)
            detail = f"versions: {', '.join(f'v{v}' for v in known)}" if known else "nothing published under that name"
            raise ArtifactError(f"artifact {name}:{version} not found in {self.root} ({detail})")
        return found

    def publish(self, name: str, output_url: str, manifest: Manifest, *, cache_key: str) -> ArtifactVersion:
        """Register `output_url` as the next version of `name` (or return the version that already
        holds this exact content), and point `latest` at it."""
        for number in reversed(self._versions(name)):
            existing = self.version(name, f"v{number}")
            if existing and existing.digest == manifest.digest and existing.uri == output_url:
                self._write_latest(name, existing)
                return existing
            break
        while True:
            number = (self._versions(name) or [0])[-1] + 1
            record = ArtifactVersion(
                name=name,
                version=f"v{number}",
                type=manifest.type,
                digest=manifest.digest,
                uri=output_url,
                stage=manifest.stage,
                cache_key=cache_key,
                created=_now(),
                metrics=manifest.metrics,
                inputs=[i.model_dump() for i in manifest.inputs],
                report=manifest.report,
            )
            version_file = self._path("_registry", name, f"v{number}.json")
            try:
                created = self._create_exclusive(version_file, record.model_dump_json(indent=2))
                if not created:
                    taken = self.version(name, f"v{number}")
                    if taken is None or (taken.digest, taken.uri) != (manifest.digest, output_url):
                        continue
                    # Ours: a write the store made although its answer was lost in an outage, or
                    # an identical publisher's. One version per content, either way.
                    record = taken
            except OSError as error:
                if no_space_left(error):
                    raise self._full(name, output_url, error) from error
                raise
            try:
                self._write_latest(name, record)
            except OSError as error:
                if not no_space_left(error):
                    raise
                # No version that `latest` does not name: take ours back (nobody resolves it by
                # number yet; the rerun publishes it again).
                if created:
                    self.fs.rm_file(version_file)
                raise self._full(name, output_url, error) from error
            return record

    def _full(self, name: str, output_url: str, error: OSError) -> StoreFull:
        return StoreFull(
            f"no space left in the artifact store {self.root} to publish artifact {name} ({output_url}): "
            f"{error.strerror}; its registry and `latest` are unchanged"
        )

    def _create_exclusive(self, path: str, text: str) -> bool:
        self.fs.makedirs(str(Path(path).parent), exist_ok=True)
        if self.is_local:
            tmp = _write_temp(path, text)
            try:
                os.link(tmp, path)  # fails if another publisher took this version first
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        self._fresh(path)
        if self.fs.exists(path):
            return False
        if "s3" in self.fs.protocol:
            try:  # a conditional PUT (If-None-Match): the server refuses it if another publisher won
                self.fs.pipe_file(path, text.encode(), mode="create")
            except OSError:  # FileExistsError, or the server's "pre-conditions did not hold"
                self._fresh(path)
                if self.fs.exists(path):
                    return False
                raise
            return True
        self.fs.pipe_file(path, text.encode())
        return True

    def _write_latest(self, name: str, record: ArtifactVersion) -> None:
        """Point `latest` at the newest version. Reading `latest` and then replacing it is not
        atomic: a publisher of v1 that read it before a publisher of v2 wrote it would move it
        back to v1. So every publisher checks after writing, and writes again while `latest` is
        not the newest version file: the last writer always leaves it on the newest."""
        while True:
            current = self.latest(name)
            versions = self._versions(name)
            newest = (self.version(name, f"v{versions[-1]}") if versions else None) or record
            if current is not None and current.version == newest.version:
                return
            self._write_atomic(self._path("_registry", name, "latest.json"), newest.model_dump_json(indent=2))

    def _write_atomic(self, path: str, text: str) -> None:
        self.fs.makedirs(str(Path(path).parent), exist_ok=True)
        if self.is_local:
            os.replace(_write_temp(path, text), path)
        else:
            self.fs.pipe_file(path, text.encode())

    # --- submission records ---------------------------------------------------------------
    def read_record(self, cache_key: str) -> SubmissionRecord | None:
        data = self._read_json(self._path("_runs", f"{cache_key}.json"))
        return SubmissionRecord.model_validate(data) if data else None

    def write_record(self, record: SubmissionRecord) -> None:
        self._write_atomic(self._path("_runs", f"{record.cache_key}.json"), record.model_dump_json(indent=2))

    @contextlib.contextmanager
    def claim(self, cache_key: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """The exclusive right to compute `cache_key` among the orchestrators sharing this store.

        Two identical runs started together both find no manifest; without a claim both would
        submit a job into the same work folder. The second waits here (on_wait is told why),
        then finds the first one's manifest. On a local store the claim is an flock on
        `_runs/<cache_key>.lock`: the kernel releases it when its holder dies, SIGKILL
        included, so a crashed run never blocks its rerun. Remote stores have no such lock;
        there a rerun relies on the submission record and re-attaching (tasks.submit).
        """
        if not self.is_local:
            yield
            return
        path = Path(self._path("_runs", f"{cache_key}.lock"))
        waiting = f"another run (pid {{holder}}) is computing cache key {cache_key}; waiting for it"
        with _exclusive_flock(path, waiting, on_wait) as fd:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
            yield

    def wait_for_jobs(self, work_url: str, what: str, on_wait: Callable[[str], None] | None = None) -> str | None:
        """Return once no local job of the work folder `work_url` is running; the job waited for
        (`pid@host`), or None if there was none.

        Every process of a local job holds a shared flock on `<work folder>/job.lock` from its
        start to its end (recipes.nano3.runtime.hold_job_lock; the kernel drops it when the job
        dies, SIGKILL included); this takes the lock exclusively, so it waits for all of them,
        and lets it go at once. A local job stops when its orchestrator dies, but not in the
        same instant: the job of a killed run can still be running, or writing its manifest,
        when the rerun holds the claim (which died with that run). Call this after the claim and
        before submitting, then look for the manifest again. A job of a dead orchestrator that
        takes its lock after this finds the orchestrator gone and does nothing. The work folder
        is on this machine: in the store (a local one) or under the scratch folder (a remote
        one), as the job computes it (recipes.nano3.runtime.local_work_dir).
        """
        waited: list[str] = []
        waiting = f"waiting for the previous job (pid {{holder}}) of {what} to end"
        with _exclusive_flock(local_work_dir(work_url) / JOB_LOCK, waiting, on_wait, waited=waited):
            pass  # held by nobody now: released at once
        return waited[0] if waited else None


class _ThroughOutages:
    """A remote file system whose every call is tried again while the store cannot be reached
    (recipes.nano3.outage), saying so in the run's log."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_fs":  # copy and pickle probe these before _fs exists
            raise AttributeError(name)
        attribute = getattr(self._fs, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            what = f"{name} {args[0]}" if args and isinstance(args[0], str) else name
            return through_outages(lambda: attribute(*args, **kwargs), what=what, tell=_tell)

        return call


def _tell(message: str) -> None:
    """A warning in the Prefect run's log when there is one, else on stderr."""
    if "prefect" in sys.modules:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            get_run_logger().warning(message)
            return
        except MissingContextError:
            pass
    print(message, file=sys.stderr, flush=True)


def _write_temp(path: str, text: str) -> str:
    """A temporary file beside `path` holding `text`; none is left behind when writing fails
    (a full disk): the store keeps no half-written files."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        Path(tmp).write_text(text)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


@contextlib.contextmanager
def _exclusive_flock(
    path: Path, waiting: str, on_wait: Callable[[str], None] | None, waited: list[str] | None = None
) -> Iterator[int]:
    """An exclusive flock on `path`, yielding its fd; if someone holds it, `on_wait` is told
    `waiting` (its `{holder}` is the `pid@host` the holder wrote) before blocking. The kernel
    drops a dead holder's lock, SIGKILL included, so nobody waits on a crashed process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            if waited is not None:
                waited.append(holder)
            if on_wait is not None:
                on_wait(waiting.format(holder=holder))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


#: Where artifacts go when neither env.toml [artifacts] nor NANO3_ARTIFACTS_ROOT says otherwise.
DEFAULT_ROOT = ".nano3/artifacts"


def open_store(settings: ArtifactsConfig | None) -> ArtifactStore:
    """The store of env.toml's [artifacts] (or its block); NANO3_ARTIFACTS_ROOT; else ./.nano3/artifacts."""
    from blocks.tool_settings import tool_settings

    root = (settings.root if settings else None) or tool_settings().artifacts_root or DEFAULT_ROOT
    options: dict[str, Any] = {}
    if settings and root.startswith(("s3://", "s3a://")):
        client_kwargs = {
            k: v for k, v in (("endpoint_url", settings.endpoint_url), ("region_name", settings.region)) if v
        }
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        if settings.access_key_id:
            options["key"] = settings.access_key_id
        if settings.secret_access_key is not None:
            options["secret"] = settings.secret_access_key.get_secret_value()
    return ArtifactStore(root, options)

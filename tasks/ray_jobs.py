"""`ray` stages as NeMo-Run Ray jobs, where NeMo-Run has one that can run them.

A `ray` stage (RL and the pretraining data prep on backend megatron) needs a Ray cluster over its
job's nodes, its script running as the Ray driver on the head node. Two ways, chosen from the
profile (`how_ray_runs` says which, and why, in every plan):

- **NeMo-Run's Ray job for the executor** (the profile's `ray_job`), the stage's script its driver:
  - Slurm with a container image: SlurmRayJob. Its `ray.sub` starts the Ray head in a pyxis
    container on the first node and a worker on every other node, then runs the driver on the
    head node; the job's folder is `<job_dir>/<name>/` (ray.sub, logs/, code/).
  - DGX Cloud, more than one node: DGXCloudRayJob. A distributed workload whose every pod runs
    NeMo-Run's Ray bootstrap script from the PVC: pod 0 starts the head and runs the driver, the
    others join; the code goes to `<pvc_nemo_run_dir>/<name>/code` first, by NeMo-Run's data mover.
- **Elsewhere, recipes/nano3/ray_cluster.py on every node**, as an ordinary NeMo-Run Experiment
  task (tasks.submission.recipe_task), because NeMo-Run 0.11's Ray jobs cannot run the stage
  there (the profile's `ray_job_gap` says why: pyxis missing, one node, Lepton's cluster left
  running after the job).

A Ray job is not an Experiment: no experiment id, its own status, logs and cancel. `RayJobRun`
gives it the few Experiment calls the wait, the re-attach and the `runs` commands make, so both
kinds of submission go through one path (tasks.submit, tasks.submissions). Its record holds the
job's name, its scheduler id (Slurm job, DGX Cloud workload) and the executor serialized by
NeMo-Run, so that a rerun or `runs status` on another machine follows the job without the profile.
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any

from tasks.job_config import JobConfig
from tasks.stages import RAY_CLUSTER_SCRIPT
from tasks.thread_stdout import thread_stdout

logger = logging.getLogger(__name__)

#: What the plan's `ray:` line says for each way (tasks.submission.render_plan).
LAUNCHER = f"{RAY_CLUSTER_SCRIPT} on every node"
#: A Slurm Ray job's output, best first (tasks.submit.LogTail): the driver's, in the job folder's
#: logs/, once it runs; ray.sub's own before (Ray starting on each node, or why it did not).
LOG_PATTERNS = ("ray-job.log", "sbatch_*.out")
#: The schedulers' states, folded into the names NeMo-Run's Experiment reports (tasks.submit.ACTIVE).
SLURM_STATES = {
    "PENDING": "PENDING", "CONFIGURING": "PENDING", "REQUEUED": "PENDING", "REQUEUE_HOLD": "PENDING",
    "RESIZING": "RUNNING", "RUNNING": "RUNNING", "COMPLETING": "RUNNING", "SUSPENDED": "RUNNING",
    "COMPLETED": "SUCCEEDED", "CANCELLED": "CANCELLED",
    # squeue has no such job and the job folder no id: sbatch never took it (a crash before).
    "NOT_FOUND": "UNSUBMITTED",
}


def uses_ray_job(job: JobConfig) -> bool:
    """Whether the stage's job is a NeMo-Run Ray job (else an Experiment task, the launcher for `ray`)."""
    return job.stage.launcher == "ray" and job.profile.ray_job_gap() is None


def how_ray_runs(job: JobConfig) -> str | None:
    """The plan's `ray:` line: which way, and why not NeMo-Run's Ray job where it is not."""
    if job.stage.launcher != "ray":
        return None
    gap = job.profile.ray_job_gap()
    return f"NeMo-Run {job.profile.ray_job}, the script as its driver" if gap is None else f"{LAUNCHER}; {gap}"


def job_name(job: JobConfig, cache_key: str, attempt: int) -> str:
    """One name per submission: the job folder, the Slurm job name, the DGX Cloud workload name.
    NeMo-Run reuses a folder's packaged code and skips creating a cluster whose name is already
    queued: an attempt of its own gets neither from an earlier one. At most 35 characters for the
    longest stage (DGXCloudRayJob cuts a longer name, attempt number first)."""
    return f"nano3-{job.stage.slug}-{cache_key[:8]}-{attempt}"


def plan_name(job: JobConfig) -> str:
    """The name a plan shows for the job's (its cache key and attempt are not known yet)."""
    return f"nano3-{job.stage.slug}-<submission>"


#: The Ray token of a Slurm Ray job, in its folder (see _ray_token_env).
RAY_TOKEN_FILE = ".ray_auth_token"


def secrets_file(name: str) -> str:
    """Where, under the executor's job folder, a Slurm Ray job's secret env vars wait for its
    driver: inside the job's own folder, which ray.sub mounts into the head node's container.
    They are loaded by the driver's command, not ray.sub's setup, because ray.sub prints every
    node's environment (`env`) into the job's logs."""
    return f"{name}/.secrets.env"


def driver_command(job: JobConfig, code: str, config_path: str, secrets: str | None) -> str:
    """What the Ray job runs on the head node once every node has joined: the secrets loaded
    first where they travel as a file (`secrets`), then the script. `RAY_ADDRESS=auto`: the
    script's `ray.init` joins the cluster running on its node (found by its processes, whatever
    temp folder the job gave it)."""
    script = f"{code}/{job.stage.script_relpath}"
    run = f"RAY_ADDRESS=auto PYTHONPATH={shlex.quote(code)} python {shlex.quote(script)} --config {shlex.quote(config_path)}"
    return f"{secrets}; {run}" if secrets else run


def _packaged_code(executor: Any, name: str, into: str) -> str:
    """The executor's packager's archive (what an Experiment would ship), unpacked in `into/code`.

    Packaged from where NeMo-Run's executors package: a git archive from the repository of the
    working directory, every other packager from the working directory. A packager that ships
    nothing (`packager = "none"`) leaves the folder empty, as it leaves an Experiment's."""
    from nemo_run.core.packaging.git import GitArchivePackager

    base = Path.cwd()
    if isinstance(executor.packager, GitArchivePackager):
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        base = Path(top.stdout.strip())
    archive = executor.packager.package(base, into, name)
    code = os.path.join(into, "code")
    os.makedirs(code, exist_ok=True)
    if archive:
        with tarfile.open(archive) as tar:
            tar.extractall(code, filter="data")
        os.remove(archive)
    return code


def _as_ray_sub_needs(job: JobConfig, executor: Any, folder: str) -> str | None:
    """What NeMo-Run's ray.sub takes for granted of its job:
    - the node's whole memory (`--mem=0` unless the profile says `mem`): it probes the Ray head
      with steps beside the head's (`srun --overlap`), and Slurm gives such a step no memory
      while the head's step holds the job's ("Memory required by task is not available", seen on
      a Slurm node whose job had 1 GB per CPU: the job waited out its 600 s and failed);
    - CPUS_PER_WORKER: else each node's Ray asks for 16 CPUs per GPU; a profile's cpus_per_task
      is what its nodes offer a task;
    - `scontrol show job --json` (SCONTROL_JSON_BEFORE_23_02);
    - that `ray status` and the head agree on Ray's token auth (_ray_token_env): returns the path
      of the job's own token when it has one, for the submission to write."""
    if executor.mem is None:
        executor.mem = "0"
    cpus = getattr(job.profile, "cpus_per_task", None)
    if cpus:
        executor.env_vars.setdefault("CPUS_PER_WORKER", str(cpus))
    if SCONTROL_JSON_BEFORE_23_02 not in (executor.setup_lines or ""):
        executor.setup_lines = "\n".join(filter(None, [executor.setup_lines, SCONTROL_JSON_BEFORE_23_02]))
    return _ray_token_env(executor, folder)


#: ray.sub learns its job's working directory from `scontrol show job --json`, which Slurm has
#: from 23.02 on; before (22.05 is Debian 12's), the option is refused and, under ray.sub's
#: `set -e`, the job ends once its Ray cluster is up, before the driver runs. There the same field
#: comes from scontrol's text output; a newer Slurm's own --json is used as it is.
SCONTROL_JSON_BEFORE_23_02 = """\
# Slurm before 23.02 has no `scontrol --json`, which ray.sub reads the job's WorkDir with.
if ! scontrol show job "$SLURM_JOB_ID" --json >/dev/null 2>&1; then
  scontrol() {
    if [[ " $* " == *" --json "* ]]; then
      printf '{"jobs": [{"current_working_directory": "%s"}]}\\n' \\
        "$(command scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *WorkDir=//p')"
    else
      command scontrol "$@"
    fi
  }
fi"""


def _ray_token_env(executor: Any, folder: str) -> str | None:
    """Ray's token authentication, with the token in the job's folder (0600), for every node.

    Ray (2.5x on) turns token auth on for `ray start --head` whenever the user's home holds a
    token (`~/.ray/auth_token`, which any earlier local `ray.init()` writes), while `ray status`,
    which ray.sub probes the head with, leaves it off unless RAY_AUTH_MODE says otherwise: the
    probe is refused and the job waits out its 600 s (seen on the local Slurm). Saying `token`
    everywhere, with a token of the job's own in the folder every node mounts, makes head,
    workers, probes and driver agree, on a shared home or none. A profile's own RAY_AUTH_MODE
    wins; returns the token file's path when the job's own token is used."""
    if executor.env_vars.setdefault("RAY_AUTH_MODE", "token") != "token":
        return None
    return executor.env_vars.setdefault("RAY_AUTH_TOKEN_PATH", os.path.join(folder, RAY_TOKEN_FILE))


# --- SlurmRayJob -------------------------------------------------------------------------------


def _slurm_folder(executor: Any, name: str) -> str:
    """SlurmRayJob's folder for the job (NeMo-Run: `<tunnel.job_dir>/<name>`)."""
    return os.path.join(executor.tunnel.job_dir, name)


def _slurm_plan(job: JobConfig, executor: Any, config_path: str, secrets: str | None) -> str:
    """The ray.sub a submission sends, rendered by NeMo-Run's SlurmRayRequest as
    SlurmRayCluster.create builds it."""
    from nemo_run.run.ray.slurm import SlurmRayRequest

    name = plan_name(job)
    folder = _slurm_folder(executor, name)
    _as_ray_sub_needs(job, executor, folder)
    code = os.path.join(folder, "code")
    request = SlurmRayRequest(
        name=name,
        cluster_dir=folder,
        template_name="ray.sub.j2",
        executor=executor,
        command=driver_command(job, code, config_path, secrets),
        workdir=code,
        launch_cmd=["sbatch", "--parsable"],
    )
    return f"# sbatch --parsable {folder}/ray.sub  (NeMo-Run SlurmRayJob)\n{request.materialize()}"


def _slurm_start(job: JobConfig, executor: Any, name: str, config_path: str, secrets: str | None) -> Any:
    """SlurmRayJob.start, given the executor's packager's files as its `workdir` (it copies them
    to `<job folder>/code` over the tunnel): NeMo-Run's own packaging branch prints the archive's
    file list to this process's stdout. The job folder and its logs/ are made first: Slurm cannot
    start a job whose --output folder does not exist, and ray.sub makes it only once running."""
    from nemo_run.run.ray.slurm import SlurmRayJob

    folder = _slurm_folder(executor, name)
    token_path = _as_ray_sub_needs(job, executor, folder)
    executor.tunnel.connect()
    executor.tunnel.run(f"mkdir -p {shlex.quote(os.path.join(folder, 'logs'))}")
    if token_path is not None:
        from blocks.executors import ship_private_file

        ship_private_file(executor.tunnel, token_path, token_hex(32), remote=job.profile.tunnel == "ssh")
    ray_job = SlurmRayJob(name=name, executor=executor)
    with tempfile.TemporaryDirectory(prefix="nano3-ray-code-") as scratch, thread_stdout(io.StringIO()):
        ray_job.start(command=driver_command(job, os.path.join(folder, "code"), config_path, secrets),
                      workdir=_packaged_code(executor, name, scratch))
    if not ray_job.job_id:
        raise RuntimeError(f"sbatch gave no job id for the Ray job {name} ({folder}/ray.sub)")
    return ray_job


def _slurm_reopen(executor: Any, name: str, job_id: str | None) -> Any:
    from nemo_run.run.ray.slurm import SlurmRayJob

    ray_job = SlurmRayJob(name=name, executor=executor)
    ray_job.job_id = job_id
    return ray_job


def _slurm_state(ray_job: Any) -> tuple[str, str | None]:
    info = ray_job.status(display=False)
    ray_job.job_id = info.get("job_id") or ray_job.job_id
    word = str(info.get("state") or "").split()[0] if info.get("state") else ""
    if word == "COMPLETING" and ray_job.job_id:
        # The outcome is final once the batch script has ended, while squeue (which NeMo-Run asks
        # first) shows the job COMPLETING until every node has cleaned up: Ray's processes hold a
        # step's output open for up to a minute after (70 s seen on the local Slurm). Accounting
        # has the end state already, as it has for an Experiment's job.
        from blocks.executors import slurm_accounted_state

        ended = slurm_accounted_state(ray_job.executor.tunnel, str(ray_job.job_id), tries=1)
        word = ended if ended not in (None, "RUNNING", "PENDING", "COMPLETING") else word
    if word in SLURM_STATES:
        return SLURM_STATES[word], ray_job.job_id
    return ("UNKNOWN" if word in ("", "UNKNOWN") else "FAILED"), ray_job.job_id


# --- DGXCloudRayJob ----------------------------------------------------------------------------

#: DGX Cloud workload phases (NeMo-Run's DGXCloudState values), folded as above.
DGX_STATES = {
    "Creating": "PENDING", "Initializing": "PENDING", "Resuming": "PENDING", "Pending": "PENDING",
    "Running": "RUNNING", "Updating": "RUNNING",
    "Completed": "SUCCEEDED", "Failed": "FAILED", "Degraded": "FAILED",
    "Stopped": "CANCELLED", "Stopping": "CANCELLED", "Terminating": "CANCELLED", "Deleting": "CANCELLED",
}


def _dgx_folder(executor: Any, name: str) -> str:
    return f"{executor.pvc_nemo_run_dir.rstrip('/')}/{name}"


def _dgx_plan(job: JobConfig, executor: Any, config_path: str, secrets: str | None) -> str:
    """NeMo-Run's bootstrap script every pod runs, and what the workload asks for."""
    from nemo_run.run.ray.dgxcloud import build_ray_bootstrap_script

    folder = _dgx_folder(executor, plan_name(job))
    script = build_ray_bootstrap_script(
        training_command=driver_command(job, f"{folder}/code", config_path, secrets),
        gpus_per_node=executor.gpus_per_node,
        num_nodes=executor.nodes,
        head_ip_dir=executor.pvc_nemo_run_dir,
    )
    return (
        f"# NeMo-Run DGXCloudRayJob: the code to {folder}/code (NeMo-Run's data mover), the script below\n"
        f"# to {executor.pvc_nemo_run_dir}/ray_bootstrap_<name>.sh, then POST {executor.base_url}/workloads/distributed:\n"
        f"# {executor.nodes} pods of {executor.container_image}, {executor.gpus_per_node} GPUs each, each running it\n"
        f"{script}"
    )


def _dgx_start(job: JobConfig, executor: Any, name: str, config_path: str, secrets: str | None) -> Any:
    """The code first (NeMo-Run's data mover copies a folder to the PVC, as it does for an
    Experiment; DGXCloudRayJob ships none), then DGXCloudRayJob.start."""
    from nemo_run.run.ray.dgxcloud import DGXCloudRayJob

    folder = _dgx_folder(executor, name)
    with tempfile.TemporaryDirectory(prefix="nano3-ray-code-") as scratch:
        _packaged_code(executor, name, scratch)
        executor.job_dir, executor.pvc_job_dir = scratch, folder
        if executor.launched_from_cluster:  # the PVC is mounted here
            shutil.copytree(scratch, folder, dirs_exist_ok=True)
        else:
            token = executor.get_auth_token()
            if not token:
                raise RuntimeError(f"DGX Cloud at {executor.base_url} gave no token for client {executor.client_id}")
            project_id, cluster_id = executor.get_project_and_cluster_id(token)
            executor.move_data(token, project_id, cluster_id)
    ray_job = DGXCloudRayJob(name=name, executor=executor)
    ray_job.start(command=driver_command(job, f"{folder}/code", config_path, secrets), workdir="")
    if not ray_job.workload_id:
        raise RuntimeError(f"DGX Cloud gave no workload id for the Ray job {name}")
    return ray_job


def _dgx_reopen(executor: Any, name: str, job_id: str | None) -> Any:
    from nemo_run.run.ray.dgxcloud import DGXCloudRayJob

    return DGXCloudRayJob(name=name, executor=executor, workload_id=job_id)


def _dgx_state(ray_job: Any) -> tuple[str, str | None]:
    """No workload id in the record: the orchestrator stopped before DGX Cloud answered the
    workload's POST, which (nothing lists workloads by name through NeMo-Run) is taken as never
    created: resubmitted."""
    if not ray_job.workload_id:
        return "UNSUBMITTED", None
    info = ray_job.status(display=False) or {}
    return DGX_STATES.get(str(info.get("state")), "UNKNOWN"), ray_job.workload_id


# --- One way through for both ------------------------------------------------------------------


@dataclass(frozen=True)
class _Backend:
    #: (job, executor, config path, secret-loading commands) → the plan's submission text.
    plan: Callable[[JobConfig, Any, str, str | None], str]
    #: (job, executor, name, config path, secret-loading commands) → NeMo-Run's Ray job, submitted.
    start: Callable[[JobConfig, Any, str, str, str | None], Any]
    reopen: Callable[[Any, str, str | None], Any]
    #: (state, scheduler id) of the job now.
    state: Callable[[Any], tuple[str, str | None]]
    #: Its log files' folder on this machine (a Slurm job through a local tunnel), else None.
    log_dir: Callable[[Any], str | None]
    job_id: Callable[[Any], str | None]


#: A profile's `ray_job` → how it is planned, submitted and followed.
BACKENDS: dict[str, _Backend] = {
    "SlurmRayJob": _Backend(_slurm_plan, _slurm_start, _slurm_reopen, _slurm_state,
                            log_dir=lambda ray_job: os.path.join(ray_job.cluster_dir, "logs"),
                            job_id=lambda ray_job: ray_job.job_id),
    "DGXCloudRayJob": _Backend(_dgx_plan, _dgx_start, _dgx_reopen, _dgx_state,
                               log_dir=lambda ray_job: None, job_id=lambda ray_job: ray_job.workload_id),
}


def plan_text(job: JobConfig, executor: Any, config_path: str, secrets: str | None) -> str:
    """What a submission would send (NeMo-Run's own rendering), with a placeholder name."""
    return BACKENDS[job.profile.ray_job].plan(job, executor, config_path, secrets)


def _saved_executor(name: str) -> Path:
    from nemo_run.config import get_nemorun_home

    return Path(get_nemorun_home()) / "ray_jobs" / name / "executor.json"


def start(job: JobConfig, executor: Any, *, name: str, config_path: str, secrets: str | None) -> RayJobRun:
    """Submit the stage as the profile's NeMo-Run Ray job; returns once the scheduler has it.

    The executor is saved first, as NeMo-Run saves an Experiment's (serialized by NeMo-Run, in
    its home, readable by the user alone: a DGX Cloud executor holds the client secret), so that
    a rerun or `runs status` on this machine can follow the job from its record."""
    from nemo_run.core.serialization.zlib_json import ZlibJSONSerializer

    saved = _saved_executor(name)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.touch(mode=0o600)
    saved.write_text(ZlibJSONSerializer().serialize(executor.to_config()))
    backend = BACKENDS[job.profile.ray_job]
    return RayJobRun(backend.start(job, executor, name, config_path, secrets), backend)


def reopen(ray_job: str, name: str, job_id: str | None) -> RayJobRun:
    """The Ray job of a record (its NeMo-Run class, name and scheduler id), followed again from
    the executor saved at its submission; FileNotFoundError if that is not in this NeMo-Run home."""
    import fiddle as fdl
    from nemo_run.core.serialization.zlib_json import ZlibJSONSerializer

    executor = fdl.build(ZlibJSONSerializer().deserialize(_saved_executor(name).read_text()))
    backend = BACKENDS[ray_job]
    return RayJobRun(backend.reopen(executor, name, job_id), backend)


@dataclass
class _JobView:
    executor: Any


@dataclass
class RayJobRun:
    """A NeMo-Run Ray job through the Experiment calls tasks.submit and tasks.submissions make."""

    ray_job: Any
    backend: _Backend
    detach: bool = False
    jobs: list[_JobView] = field(init=False)

    def __post_init__(self) -> None:
        self.jobs = [_JobView(self.ray_job.executor)]

    @property
    def _id(self) -> str:
        return self.ray_job.name

    @property
    def job_id(self) -> str | None:
        return self.backend.job_id(self.ray_job)

    def status(self, return_dict: bool = True) -> dict[str, dict[str, Any]]:
        """{name: {status, job_id, local_dir, handle}}, as Experiment.status(return_dict=True).
        A scheduler that cannot be asked is UNKNOWN, with the reason logged (tasks.submit waits)."""
        try:
            state, job_id = self.backend.state(self.ray_job)
        except Exception as exc:  # noqa: BLE001 - the scheduler failing to answer: the job may still run
            logger.warning("asking about Ray job %s failed: %s", self.ray_job.name, exc)
            state, job_id = "UNKNOWN", self.job_id
        return {
            self.ray_job.name: {
                "status": state,
                "job_id": job_id,
                "local_dir": self.backend.log_dir(self.ray_job),
                "handle": None,
            }
        }

    def cancel(self, name: str) -> None:
        self.ray_job.stop()

#!/usr/bin/env python3
"""A real single-node Slurm on this machine, with accounting, to try Slurm profiles without a cluster.

    .venv/bin/python scripts/dev/local_slurm.py start [--dir DIR] [--gpus N] [--partition NAME]
    .venv/bin/python scripts/dev/local_slurm.py status|stop [--dir DIR]

It runs munged, a throwaway MariaDB, slurmdbd, slurmctld and slurmd, all with their config,
state, logs and pid files under one folder and on free ports, so it touches neither /etc nor a
Slurm or MariaDB the machine may already run. slurmdbd is there because NeMo-Run reads job
states only from `sacct`; without it every job reads UNKNOWN. `--gpus N` adds N fake GPUs
(character devices made with mknod, Gres=gpu:N) so `--gpus-per-node` jobs get
CUDA_VISIBLE_DEVICES. `--host-containers` builds and loads a SPANK plugin (host_containers.c,
beside this file) that accepts pyxis's `--container-*` srun options and runs each task on the
host: this machine has no container runtime, so a profile's container_image would otherwise
make every srun fail (NeMo-Run's ray.sub passes them on every step). Needs root: slurmd starts
jobs as their users.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_daemons import (  # noqa: E402
    DevServiceError,
    MissingPrerequisite,
    command_line,
    free_ports,
    port_answers,
    read_pid,
    require_command,
    run_command_line,
    start_daemon,
    stop_pid,
    wait_until,
)

DEFAULT_DIR = ".nano3/dev/slurm"
CLUSTER_NAME = "nano3"
DEFAULT_PARTITION = "debug"
INSTALL_HINT = "run scripts/dev/install_packages.sh (apt-get install slurm-wlm slurmdbd mariadb-server munge)"
HOST_CONTAINERS_SOURCE = Path(__file__).resolve().with_name("host_containers.c")
#: What building the plugin and running NeMo-Run's ray.sub (`srun --mpi=pmix`) need.
HOST_CONTAINERS_HINT = "run scripts/dev/install_packages.sh (apt-get install gcc libslurm-dev libpmix-dev)"
#: Start order; stop goes the other way. Each name is also the program its pid must be running.
DAEMONS = ["munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"]
#: Unix sockets (munge, MariaDB, slurmstepd) live under the folder; the kernel caps their paths.
MAX_SOCKET_PATH = 100


@dataclass
class SlurmCluster:
    """What a user or a test needs to talk to the cluster."""

    dir: str
    slurm_conf: str
    cluster: str
    partition: str
    gpus: int
    node: str
    host_containers: bool = False

    @property
    def env(self) -> dict[str, str]:
        """Variables that point sbatch, squeue, sacct and NeMo-Run's Slurm executor at this cluster."""
        return {"SLURM_CONF": self.slurm_conf}


class _Layout:
    """Where each file of the cluster lives under its folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.etc, self.log, self.run, self.pids = (self.root / n for n in ("etc", "log", "run", "pids"))
        self.state, self.spool, self.devices = self.root / "state", self.root / "spool", self.root / "dev"
        self.mariadb_data = self.root / "mariadb"
        self.tmp = self.root / "tmp"
        self.slurm_conf = self.etc / "slurm.conf"
        self.munge_socket = self.run / "munge.socket"
        self.mariadb_socket = self.run / "mariadb.sock"
        self.cluster_file = self.root / "cluster.json"

    def pid_file(self, daemon: str) -> Path:
        return self.pids / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.log / f"{daemon}.log"


def running_daemons(folder: Path) -> dict[str, int | None]:
    layout = _Layout(folder)
    return {name: read_pid(layout.pid_file(name), name) for name in DAEMONS}


def start_slurm(folder: Path, *, gpus: int | None = None, partition: str | None = None,
                host_containers: bool | None = None, timeout: float = 60) -> SlurmCluster:
    """Start every daemon and wait until `sinfo` shows the node idle and `sacct` answers.

    `gpus` (default 0), `partition` (default DEFAULT_PARTITION) and `host_containers` (default
    off) left as None accept a cluster that already runs with any; given, they must match it.
    """
    layout = _Layout(folder)
    pids = running_daemons(folder)
    if all(pids.values()) and layout.cluster_file.is_file():
        running = SlurmCluster(**json.loads(layout.cluster_file.read_text()))
        if (gpus not in (None, running.gpus) or partition not in (None, running.partition)
                or host_containers not in (None, running.host_containers)):
            raise DevServiceError(f"already running in {layout.root} with {running.gpus} fake GPUs, partition "
                                  f"{running.partition} and host containers {'on' if running.host_containers else 'off'}; "
                                  "stop it first to change them")
        return running
    if any(pids.values()):
        up = ", ".join(name for name, pid in pids.items() if pid)
        raise DevServiceError(f"partly running ({up}) in {layout.root}; run `stop --dir {folder}` first")
    if os.geteuid() != 0:
        raise MissingPrerequisite("a local Slurm needs root (slurmd starts jobs as their users): run it with sudo")
    programs = {name: require_command(name, INSTALL_HINT)
                for name in ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
                             "sacctmgr", "sinfo", "sacct")}
    if len(str(layout.spool)) + 40 > MAX_SOCKET_PATH:
        raise DevServiceError(f"folder path too long for Unix sockets: {layout.root}; use a shorter --dir")

    for needed in (layout.etc, layout.log, layout.run, layout.pids, layout.state, layout.spool, layout.devices,
                   layout.tmp):
        needed.mkdir(parents=True, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port, dbd_port, mariadb_port = free_ports(4)
    cluster = SlurmCluster(dir=str(layout.root), slurm_conf=str(layout.slurm_conf), cluster=CLUSTER_NAME,
                           partition=partition or DEFAULT_PARTITION, gpus=gpus or 0, node=node,
                           host_containers=bool(host_containers))
    gpu_devices = _make_fake_gpus(layout, cluster.gpus)
    plugstack = _build_host_containers(layout) if cluster.host_containers else None
    _write_configs(layout, cluster, programs["slurmd"], gpu_devices, plugstack,
                   ctld_port=ctld_port, slurmd_port=slurmd_port, dbd_port=dbd_port, mariadb_port=mariadb_port)
    env = dict(os.environ, SLURM_CONF=str(layout.slurm_conf))

    try:
        _start_munged(layout, programs["munged"], timeout)
        _start_mariadb(layout, programs, mariadb_port, timeout)
        _start(layout, "slurmdbd", [programs["slurmdbd"], "-D"], env,
               ready=lambda: port_answers(dbd_port), timeout=timeout)
        _register_cluster(programs["sacctmgr"], env)
        _start(layout, "slurmctld", [programs["slurmctld"], "-D", "-f", str(layout.slurm_conf)], env,
               ready=lambda: port_answers(ctld_port), timeout=timeout)
        _start(layout, "slurmd", [programs["slurmd"], "-D", "-f", str(layout.slurm_conf)], env,
               ready=lambda: _node_state(programs["sinfo"], env, node) in {"idle", "mixed", "allocated"},
               timeout=timeout)
        wait_until(lambda: _answers([programs["sacct"], "-n", "-X", "-S", "now"], env),
                   what="sacct", timeout=timeout, log_file=layout.log_file("slurmdbd"))
    except BaseException:
        stop_slurm(folder)
        raise
    layout.cluster_file.write_text(json.dumps(asdict(cluster), indent=2) + "\n")
    return cluster


def stop_slurm(folder: Path, *, timeout: float = 60) -> list[str]:
    """Cancel the cluster's jobs, then stop the daemons recorded in the folder's pid files, newest
    first; return those that ran. A job still running when slurmd stops would run on, orphaned
    (its slurmstepd and processes stay), and hold ports and files the next cluster needs."""
    layout = _Layout(folder)
    stopped = []
    try:
        pids = running_daemons(folder)
        if pids["slurmctld"] and pids["slurmd"]:
            _cancel_jobs(layout, timeout)
    finally:
        for name in reversed(DAEMONS):
            if stop_pid(layout.pid_file(name), name):
                stopped.append(name)
    return stopped


def _cancel_jobs(layout: _Layout, timeout: float) -> None:
    env = dict(os.environ, SLURM_CONF=str(layout.slurm_conf))

    def queued() -> list[str]:
        listed = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=30)
        return listed.stdout.split() if listed.returncode == 0 else []

    jobs = queued()
    if jobs:
        subprocess.run(["scancel", "--full", *jobs], env=env, capture_output=True, timeout=30)
        wait_until(lambda: not queued(), what="the cancelled jobs to end", timeout=timeout,
                   log_file=layout.log_file("slurmd"))


#: The daemons `restart_daemon` can bounce: what each runs as, and the config key of its port.
RESTARTABLE = {"slurmctld": ("SlurmctldPort", "slurm.conf"), "slurmdbd": ("DbdPort", "slurmdbd.conf")}


def stop_daemon(folder: Path, name: str) -> bool:
    """Stop one daemon of the cluster (a controller crash, an upgrade); True if it ran."""
    if name not in RESTARTABLE:
        raise DevServiceError(f"{name}: only {', '.join(RESTARTABLE)} can be stopped alone")
    return stop_pid(_Layout(folder).pid_file(name), name)


def start_daemon_again(folder: Path, name: str, *, timeout: float = 60) -> None:
    """Start a daemon stopped by stop_daemon with its config, state and port unchanged, and wait
    until it answers: slurmctld recovers its jobs from StateSaveLocation, slurmdbd from MariaDB."""
    if name not in RESTARTABLE:
        raise DevServiceError(f"{name}: only {', '.join(RESTARTABLE)} can be started alone")
    layout = _Layout(folder)
    key, conf = RESTARTABLE[name]
    settings = dict(line.split("=", 1) for line in (layout.etc / conf).read_text().splitlines() if "=" in line)
    port = int(settings[key])
    program = require_command(name, INSTALL_HINT)
    argv = [program, "-D"] if name == "slurmdbd" else [program, "-D", "-f", str(layout.slurm_conf)]
    env = dict(os.environ, SLURM_CONF=str(layout.slurm_conf))
    _start(layout, name, argv, env, ready=lambda: port_answers(port), timeout=timeout)


def _make_fake_gpus(layout: _Layout, count: int) -> list[Path]:
    """Character devices standing in for GPUs: Slurm's gres/gpu plugin rejects plain files.

    Each is a copy of /dev/null (major 1, minor 3), so touching one does nothing.
    """
    devices = []
    for index in range(count):
        path = layout.devices / f"gpu{index}"
        if not (path.exists() and stat.S_ISCHR(path.stat().st_mode)):
            path.unlink(missing_ok=True)
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        devices.append(path)
    return devices


def _build_host_containers(layout: _Layout) -> Path:
    """Compile host_containers.c into the cluster's folder; return the plugstack.conf loading it."""
    compiler = require_command("cc", HOST_CONTAINERS_HINT)
    if not Path("/usr/include/slurm/spank.h").is_file():
        raise MissingPrerequisite(f"no /usr/include/slurm/spank.h to build {HOST_CONTAINERS_SOURCE.name}: "
                                  f"{HOST_CONTAINERS_HINT}")
    plugin = layout.etc / "host_containers.so"
    built = subprocess.run([compiler, "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(plugin),
                            str(HOST_CONTAINERS_SOURCE)], capture_output=True, text=True)
    if built.returncode != 0:
        raise DevServiceError(f"cannot build {HOST_CONTAINERS_SOURCE}: {built.stderr.strip()}")
    plugstack = layout.etc / "plugstack.conf"
    plugstack.write_text(f"required {plugin}\n")
    return plugstack


def _write_configs(layout: _Layout, cluster: SlurmCluster, slurmd: str, gpu_devices: list[Path],
                   plugstack: Path | None, *,
                   ctld_port: int, slurmd_port: int, dbd_port: int, mariadb_port: int) -> None:
    """slurm.conf, gres.conf and slurmdbd.conf: Slurm finds the last two beside the first."""
    auth = f"AuthType=auth/munge\nAuthInfo=socket={layout.munge_socket}\n"
    gres = f" Gres=gpu:{len(gpu_devices)}" if gpu_devices else ""
    layout.slurm_conf.write_text(
        f"ClusterName={cluster.cluster}\n"
        f"SlurmctldHost={cluster.node}(127.0.0.1)\n"
        f"SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n"
        f"{auth}"
        "SlurmUser=root\nSlurmdUser=root\n"
        f"StateSaveLocation={layout.state}\nSlurmdSpoolDir={layout.spool}\n"
        # Each step's scratch (pmix's per-step folders among it) in the cluster's folder: job ids
        # start at 1 in every new cluster, and a folder left in /tmp by an earlier one would clash.
        f"TmpFS={layout.tmp}\n"
        f"SlurmctldPidFile={layout.run / 'slurmctld.pid'}\nSlurmdPidFile={layout.run / 'slurmd.pid'}\n"
        f"SlurmctldLogFile={layout.log_file('slurmctld')}\nSlurmdLogFile={layout.log_file('slurmd')}\n"
        # No cgroups here: track processes by parent pid and bind no tasks.
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
        # Without DefMemPerCPU one job takes every CPU's memory and the next one waits.
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\nDefMemPerCPU=1024\n"
        "ReturnToService=2\nMpiDefault=none\nMailProg=/bin/true\nGresTypes=gpu\n"
        "AccountingStorageType=accounting_storage/slurmdbd\n"
        f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={dbd_port}\n"
        # With slurmdbd this names the munge socket for talking to it; AuthInfo is not used there.
        f"AccountingStoragePass={layout.munge_socket}\n"
        "JobAcctGatherType=jobacct_gather/none\nAccountingStorageTRES=gres/gpu\n"
        f"{_node_line(slurmd, cluster.node)} NodeAddr=127.0.0.1{gres} State=UNKNOWN\n"
        f"PartitionName={cluster.partition} Nodes={cluster.node} Default=YES MaxTime=INFINITE State=UP\n"
        + (f"PlugStackConfig={plugstack}\n" if plugstack else "")
    )
    (layout.etc / "gres.conf").write_text(
        "".join(f"NodeName={cluster.node} Name=gpu File={device}\n" for device in gpu_devices)
    )
    dbd_conf = layout.etc / "slurmdbd.conf"
    dbd_conf.touch(mode=0o600)
    dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read
    dbd_conf.write_text(
        f"{auth}"
        f"DbdHost={cluster.node}\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\nSlurmUser=root\n"
        f"PidFile={layout.run / 'slurmdbd.pid'}\nLogFile={layout.log_file('slurmdbd')}\n"
        "StorageType=accounting_storage/mysql\n"
        f"StorageHost=127.0.0.1\nStoragePort={mariadb_port}\nStorageUser=root\nStorageLoc=slurm_acct_db\n"
    )


def _node_line(slurmd: str, node: str) -> str:
    """`NodeName=… CPUs=… RealMemory=…` as `slurmd -C` measures this machine (its topology, exactly)."""
    measured = subprocess.run([slurmd, "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    fields = [field for field in measured.split() if not field.startswith("NodeName=")]
    return " ".join([f"NodeName={node}", *fields])


def _start_munged(layout: _Layout, munged: str, timeout: float) -> None:
    """munged with its own key and socket, so no system munge is needed or disturbed."""
    key = layout.etc / "munge.key"
    if not key.is_file():
        key.touch(mode=0o400)
        key.chmod(0o600)
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    layout.munge_socket.unlink(missing_ok=True)
    _start(layout, "munged", [
        munged, "--foreground", "--force", f"--socket={layout.munge_socket}", f"--key-file={key}",
        f"--log-file={layout.log_file('munged')}", f"--pid-file={layout.run / 'munged.pid'}",
        f"--seed-file={layout.state / 'munged.seed'}",
    ], None, ready=layout.munge_socket.exists, timeout=timeout)


def _start_mariadb(layout: _Layout, programs: dict[str, str], port: int, timeout: float) -> None:
    """A MariaDB of our own for slurmdbd, created on first start, listening on 127.0.0.1 only."""
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    if not (layout.mariadb_data / "mysql").is_dir():
        shutil.rmtree(layout.mariadb_data, ignore_errors=True)
        created = subprocess.run(
            [programs["mariadb-install-db"], "--no-defaults", f"--datadir={layout.mariadb_data}", *as_root,
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True,
        )
        if created.returncode != 0:
            raise DevServiceError(f"mariadb-install-db failed: {' | '.join(created.stderr.strip().splitlines()[-3:])}")
    _start(layout, "mariadbd", [
        programs["mariadbd"], "--no-defaults", f"--datadir={layout.mariadb_data}", *as_root,
        f"--port={port}", "--bind-address=127.0.0.1", f"--socket={layout.mariadb_socket}",
        f"--pid-file={layout.run / 'mariadbd.pid'}", f"--log-error={layout.log_file('mariadbd')}",
        # The values slurmdbd checks for (it logs "not recommended values" otherwise).
        "--innodb-buffer-pool-size=128M", "--innodb-lock-wait-timeout=900",
    ], None, ready=lambda: port_answers(port), timeout=timeout)


def _start(layout: _Layout, name: str, argv: list[str], env: dict[str, str] | None, *,
           ready: Callable[[], bool], timeout: float) -> None:
    output = layout.log_file(name + ".stdout")
    start_daemon(argv, layout.pid_file(name), output, env=env, cwd=layout.root)
    own_log = layout.log_file(name)  # munged in the foreground logs to its output instead
    wait_until(ready, what=name, timeout=timeout, log_file=own_log if own_log.is_file() else output,
               alive=lambda: read_pid(layout.pid_file(name), name) is not None)


def _register_cluster(sacctmgr: str, env: dict[str, str]) -> None:
    """Accounting knows only clusters added to it; slurmctld registers itself once it is there."""
    shown = subprocess.run([sacctmgr, "-n", "-P", "show", "cluster", "format=cluster"],
                           capture_output=True, text=True, env=env)
    if CLUSTER_NAME in shown.stdout.split():
        return
    added = subprocess.run([sacctmgr, "-i", "add", "cluster", CLUSTER_NAME], capture_output=True, text=True, env=env)
    if added.returncode != 0:
        raise DevServiceError(f"sacctmgr add cluster failed: {(added.stderr or added.stdout).strip()}")


def _node_state(sinfo: str, env: dict[str, str], node: str) -> str:
    shown = subprocess.run([sinfo, "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True, env=env)
    return shown.stdout.strip().rstrip("*~#!%$@^-")


def _answers(argv: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(argv, capture_output=True, env=env).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__.splitlines()[0], DEFAULT_DIR)
    parser.add_argument("--gpus", type=int, help="fake GPUs on the node, Gres=gpu:N (default 0)")
    parser.add_argument("--partition", help=f"name of the one partition (default {DEFAULT_PARTITION})")
    parser.add_argument("--host-containers", action="store_true", default=None,
                        help="accept pyxis's --container-* srun options, running each task on the host")
    args = parser.parse_args(argv)

    def act() -> int:
        if args.action == "stop":
            stopped = stop_slurm(args.dir)
            print(f"stopped {', '.join(stopped)}" if stopped else "not running")
            return 0
        if args.action == "status":
            pids = running_daemons(args.dir)
            for name, pid in pids.items():
                print(f"{name:10} {'running, pid ' + str(pid) if pid else 'stopped'}")
            return 0 if all(pids.values()) else 1
        already = all(running_daemons(args.dir).values())
        started = time.monotonic()
        cluster = start_slurm(args.dir, gpus=args.gpus, partition=args.partition,
                              host_containers=args.host_containers)
        if already:
            print(f"already running in {cluster.dir}")
        else:
            print(f"started in {time.monotonic() - started:.1f} s: node {cluster.node}, partition "
                  f"{cluster.partition}, {cluster.gpus} fake GPUs, cluster {cluster.cluster}"
                  + (", host containers" if cluster.host_containers else ""))
        print(f"export SLURM_CONF={cluster.slurm_conf}")
        return 0

    return run_command_line(act)


if __name__ == "__main__":
    sys.exit(main())

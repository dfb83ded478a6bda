"""Start Ray on every node of a job, run a script as the Ray driver on the head node, stop.

What each node's task of a `ray` stage runs where NeMo-Run's Ray jobs cannot run it (tasks.ray_jobs
says where and why: Slurm without pyxis, Lepton, one machine):

    python recipes/nano3/ray_cluster.py --nodes N SCRIPT --config resolved.yaml

Node 0 starts the Ray head, waits until all N nodes have joined, runs SCRIPT with RAY_ADDRESS
set, then stops Ray: the job's exit status is the script's. The other nodes join the head and
stay until it is gone. Which node is which comes from the scheduler: SLURM_NODEID and the first
host of SLURM_JOB_NODELIST on Slurm; NODE_RANK (Lepton) or PET_NODE_RANK/RANK (DGX Cloud's
PyTorchJob) and MASTER_ADDR elsewhere. With one node, the script runs alone and starts Ray itself.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

PORT = 6379
JOIN_TIMEOUT_S = 900


def node_rank() -> int:
    for name in ("SLURM_NODEID", "NODE_RANK", "PET_NODE_RANK", "RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def head_address() -> str:
    if os.environ.get("MASTER_ADDR"):
        return os.environ["MASTER_ADDR"]
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if nodelist:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return hosts.stdout.split()[0]
    raise SystemExit("error: cannot tell the head node: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")


def head_reachable(host: str) -> bool:
    try:
        with socket.create_connection((host, PORT), timeout=5):
            return True
    except OSError:
        return False


def run_head(nodes: int, command: list[str]) -> int:
    subprocess.run(["ray", "start", "--head", f"--port={PORT}", "--disable-usage-stats"], check=True)
    import ray

    ray.init(address="auto")
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while (alive := len([n for n in ray.nodes() if n["Alive"]])) < nodes:
        if time.monotonic() > deadline:
            raise SystemExit(f"error: only {alive} of {nodes} nodes joined the Ray cluster within {JOIN_TIMEOUT_S}s")
        time.sleep(5)
    ray.shutdown()
    print(f"ray cluster: {nodes} nodes up; running {' '.join(command)}", flush=True)
    code = subprocess.run(command, env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{PORT}"}).returncode
    subprocess.run(["ray", "stop"], check=False)
    return code


def run_worker(host: str) -> int:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not head_reachable(host):  # the head may start after this node
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the Ray head {host}:{PORT} never came up")
        time.sleep(5)
    subprocess.run(["ray", "start", f"--address={host}:{PORT}", "--disable-usage-stats"], check=True)
    misses = 0
    while misses < 3:  # the head is gone for good: the driver finished (or failed) there
        time.sleep(10)
        misses = 0 if head_reachable(host) else misses + 1
    subprocess.run(["ray", "stop"], check=False)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1, help="Nodes of the job; the head waits for all of them.")
    parser.add_argument("script", help="The recipe script the head node runs as the Ray driver.")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="Its arguments (--config resolved.yaml).")
    options = parser.parse_args()
    command = [sys.executable, options.script, *options.args]
    if options.nodes <= 1:
        os.execv(sys.executable, command)
    rank = node_rank()
    sys.exit(run_head(options.nodes, command) if rank == 0 else run_worker(head_address()))


if __name__ == "__main__":
    main()

"""`nemotron data encode`: a corpus cut into shards, one Prefect task per shard on prefect-ray's task
runner, joined in order. Real Ray (one the command starts, and a cluster started with `ray start`),
a real Prefect server, a real tokenizer; the bytes are compared with the single-process encoder's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from blocks.prefect_server import stop_local_servers
from recipes.nano3.data_prep import binidx, tokenizer
from tests.conftest import run_cli
from tests.processes import session_members

SHARD_MB = 0.5
WORDS = ["the", "model", "data", "shard", "ray", "prefect", "token", "12", "naïve", "日本", "\n", "😀", "  "]


def write_corpus(path: Path, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(5, 200))) for _ in range(count)]
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a 5 MB corpus, its tokenizer file)."""
    folder = tmp_path_factory.mktemp("encode")
    path = folder / "docs.jsonl"
    texts = write_corpus(path, 9000, seed=1)
    tok = tokenizer.train(texts[:2000], 600, ["<pad>", "<bos>", "<eos>"])
    tok.save(str(folder / "tokenizer.json"))
    return path, folder / "tokenizer.json"


def single_process(path: Path, tokenizer_file: Path, prefix: Path) -> Path:
    from tokenizers import Tokenizer

    binidx.encode(Tokenizer.from_file(str(tokenizer_file)), path, prefix, eos="<eos>", workers=1, bpe="hf")
    return prefix


def same_bytes(prefix: Path, expected: Path) -> None:
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == Path(f"{expected}{suffix}").read_bytes(), suffix


def shard_count(path: Path) -> int:
    return len(binidx.line_ranges_every(path, int(SHARD_MB * 1e6)))


def encode_args(path: Path, tokenizer_file: Path, prefix: Path, *extra: str) -> list[str]:
    return ["data", "encode", str(path), "--tokenizer", str(tokenizer_file), "--output-prefix", str(prefix),
            "--shard-mb", str(SHARD_MB), *extra]


def said(stdout: str, shards: int, encoded: int) -> bool:
    return f"{shards} shards, {encoded} encoded now, {shards - encoded} finished by an earlier run" in stdout


def api(url: str, path: str, body: dict | None = None) -> list[dict]:
    request = urllib.request.Request(f"{url}/api/{path}", data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def shard_states(url: str, flow_run_id: str) -> dict[str, str]:
    runs = api(url, "task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    return {run["name"]: run["state_name"] for run in runs}


def last_flow_run(url: str) -> str:
    runs = api(url, "flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
    return runs[0]["id"]


@pytest.mark.timeout(900)
def test_each_shard_is_a_prefect_task_run_on_ray_and_the_bytes_are_the_single_process_ones(corpus, tmp_path: Path) -> None:
    path, tokenizer_file = corpus
    work = tmp_path / "work"  # the test's own folder (conftest's `isolated`)
    expected = single_process(path, tokenizer_file, tmp_path / "expected")
    total = shard_count(path)
    assert total >= 8
    env = {"NANO3_LOCAL_SERVER_IDLE_MINUTES": "1"}  # the Prefect server stays to be asked
    try:
        first = run_cli(encode_args(path, tokenizer_file, work / "out", "--workers", "2"), work, env=env, module="flows.cli")
        assert first.code == 0, first.stderr[-3000:]
        assert said(first.stdout, total, total), first.stdout
        same_bytes(work / "out", expected)
        url = first.stderr.split("UI at ", 1)[1].split()[0]
        states = shard_states(url, last_flow_run(url))
        assert states == {f"shard {i} of {total}": "Completed" for i in range(1, total + 1)}
        progress = api(url, "artifacts/filter", {"artifacts": {"type": {"any_": ["progress"]}}})
        assert [a["data"] for a in progress] == [100.0]

        # Again: every shard Cached in Prefect (its key: its bytes, the tokenizer, the end token).
        again = run_cli(encode_args(path, tokenizer_file, work / "out", "--workers", "2"), work, env=env, module="flows.cli")
        assert again.code == 0 and said(again.stdout, total, 0), again.stdout + again.stderr[-2000:]
        assert set(shard_states(url, last_flow_run(url)).values()) == {"Cached"}
        same_bytes(work / "out", expected)

        # A shard's files removed by hand, Prefect's record of it kept: that shard is encoded again.
        for removed in sorted((work / "out.shards").glob("out.00003.*"))[:2]:
            removed.unlink()
        mended = run_cli(encode_args(path, tokenizer_file, work / "out", "--workers", "2"), work, env=env, module="flows.cli")
        assert mended.code == 0 and said(mended.stdout, total, 1), mended.stdout + mended.stderr[-2000:]
        same_bytes(work / "out", expected)

        # Text appended: the shards before it keep their cuts and keys; only the last and the new ones run.
        grown = tmp_path / "grown.jsonl"
        grown.write_bytes(path.read_bytes())
        write_corpus(grown, 1500, seed=2)
        now = shard_count(grown)
        more = run_cli(encode_args(grown, tokenizer_file, work / "out", "--workers", "2", "--shard-dir", str(work / "out.shards")),
                       work, env=env, module="flows.cli")
        assert more.code == 0 and now > total and said(more.stdout, now, now - total + 1), more.stdout
        same_bytes(work / "out", single_process(grown, tokenizer_file, tmp_path / "grown"))
    finally:
        stop_local_servers(tmp_path / "home" / ".prefect")


@pytest.mark.timeout(900)
def test_a_run_killed_at_60_percent_encodes_again_only_the_shards_it_had_not_finished(corpus, tmp_path: Path) -> None:
    """Killed with SIGKILL (no cleanup) once 60 % of the shards are done, Ray's processes with it;
    the rerun (Prefect's temporary server this time) encodes the rest, the bytes as if never killed."""
    path, tokenizer_file = corpus
    work, home = tmp_path / "work", tmp_path / "home"
    home.mkdir()
    total, shards = shard_count(path), work / "out.shards"
    # One shard at a time with HF tokenizers: a shard takes long enough to stop between two.
    args = encode_args(path, tokenizer_file, work / "out", "--workers", "1", "--bpe", "hf")
    env = {**os.environ, "HOME": str(home), "PREFECT_HOME": str(home / ".prefect")}
    with (tmp_path / "killed.log").open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=work, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while len(list(shards.glob("*[0-9a-f].idx"))) < 0.6 * total:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.05)
        for pid in session_members(process.pid):  # the command and Ray's processes, no cleanup
            os.kill(pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 30
    while session_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_members(process.pid) == []
    finished = {p: p.stat().st_mtime_ns for p in shards.glob("*[0-9a-f].idx")}
    assert 0.6 * total <= len(finished) < total and not (work / "out.idx").exists()

    rerun = run_cli(args, work, module="flows.cli")
    assert rerun.code == 0, rerun.stderr[-3000:]
    assert said(rerun.stdout, total, total - len(finished)), rerun.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "a finished shard was written again"
    same_bytes(work / "out", single_process(path, tokenizer_file, tmp_path / "expected"))


def stop_session(process: subprocess.Popen) -> None:
    """SIGTERM to every process of the session `process` leads (Ray's head makes groups of its own), SIGKILL after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_members(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while session_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not session_members(process.pid):
            break
    process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.timeout(900)
def test_a_ray_cluster_given_by_address_runs_the_shards(corpus, tmp_path: Path) -> None:
    """A Ray cluster the command did not start (`ray start --head`): its workers get the shard task's
    code as packages Ray uploads, and report to the command's Prefect server."""
    path, tokenizer_file = corpus
    work = tmp_path / "work"  # the test's own folder (conftest's `isolated`)
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    # Ray's sockets live in its temp folder: a short path (a socket's path has a limit of 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    home = tmp_path / "home"
    home.mkdir()
    head = subprocess.Popen([str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            # The HOME the command gets: Ray's token for the cluster is ~/.ray/auth_token.
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(home)})
    try:
        deadline = time.monotonic() + 120
        while not (temp / "session_latest").exists() or not answers(port):
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.5)
        result = run_cli(encode_args(path, tokenizer_file, work / "out", "--ray-address", f"127.0.0.1:{port}"), work,
                         module="flows.cli")
        assert result.code == 0, result.stderr[-3000:]
        assert said(result.stdout, shard_count(path), shard_count(path)), result.stdout
        same_bytes(work / "out", single_process(path, tokenizer_file, tmp_path / "expected"))
    finally:
        stop_session(head)
        shutil.rmtree(temp, ignore_errors=True)


def test_bad_input_is_one_line_naming_the_option(corpus, tmp_path: Path) -> None:
    path, tokenizer_file = corpus
    missing = run_cli(["data", "encode", str(path), "-t", str(tmp_path / "none.json"), "-o", str(tmp_path / "o")],
                      tmp_path, module="flows.cli")
    assert missing.code == 2 and f"--tokenizer: no tokenizer file {tmp_path / 'none.json'}" in missing.stderr
    both = run_cli(["data", "encode", str(path), "-t", str(tokenizer_file), "-o", str(tmp_path / "o"),
                    "--ray-address", "127.0.0.1:1", "--workers", "2"], tmp_path, module="flows.cli")
    assert both.code == 2 and "--workers: sets the CPUs of a Ray started here" in both.stderr
    port = free_port()
    nobody = run_cli(["data", "encode", str(path), "-t", str(tokenizer_file), "-o", str(tmp_path / "o"),
                      "--ray-address", f"127.0.0.1:{port}"], tmp_path, module="flows.cli")
    assert nobody.code == 2 and f"--ray-address: nothing answers at 127.0.0.1:{port}" in nobody.stderr
    eos = run_cli(["data", "encode", str(path), "-t", str(tokenizer_file), "-o", str(tmp_path / "o"), "--eos", "<end>"],
                  tmp_path, module="flows.cli")
    assert eos.code == 2 and "--eos: the tokenizer" in eos.stderr and "has no token '<end>'" in eos.stderr
    assert not list(tmp_path.glob("o*")), "nothing written"

"""Bad input: one clear line naming file, section and key; exit code 2; no traceback; nothing written.

Each case runs `python -m flows.nano3` in a fresh process, as a user would, with HOME inside the
test folder so that anything written to ~/.nemo_run or ~/.prefect would be caught.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, tree, write_env

SLURM_OK = """
[cluster]
executor = "slurm"
account = "acct"
partition = "batch"
"""

CASES = [
    # (id, env.toml text, args, substrings the one error line must contain)
    (
        "malformed-toml",
        '[cluster]\nexecutor = "slurm"\naccount = "acct\n',
        ["-r", "cluster", "-d"],
        ["env.toml", "malformed TOML", "line 3"],
    ),
    (
        "extends-cycle",
        '[a]\nextends = "b"\n[b]\nextends = "c"\n[c]\nextends = "a"\n',
        ["-r", "a", "-d"],
        ["env.toml", "extends", "cycle", "a -> b -> c -> a"],
    ),
    (
        "unknown-parent",
        '[child]\nextends = "base-slurmm"\n[base-slurm]\nexecutor = "slurm"\naccount = "x"\n',
        ["-r", "child", "-d"],
        ["env.toml", "[child]", "extends", "base-slurmm", "did you mean 'base-slurm'"],
    ),
    (
        "unknown-executor",
        '[c]\nexecutor = "slurn"\n',
        ["-r", "c", "-d"],
        ["env.toml", "[c]", "executor", "local, docker, slurm, dgxcloud, lepton", "did you mean 'slurm'"],
    ),
    (
        "wrong-type",
        SLURM_OK + 'nodes = "four"\n',
        ["-r", "cluster", "-d"],
        ["env.toml", "[cluster]", "nodes", "valid integer", "four"],
    ),
    (
        "unknown-field",
        SLURM_OK + 'gpus_per_nodes = 8\n',
        ["-r", "cluster", "-d"],
        ["env.toml", "[cluster]", "gpus_per_nodes", "unknown field", "did you mean 'gpus_per_node'"],
    ),
    (
        "missing-required",
        '[box]\nexecutor = "docker"\ngpus_per_node = 1\n',
        ["-r", "box", "-d"],
        ["env.toml", "[box]", "container_image", "required"],
    ),
    (
        "unset-env-var",
        SLURM_OK + 'remote_job_dir = "${oc.env:NANO3_TEST_UNSET_VAR}"\n',
        ["-r", "cluster", "-d"],
        ["env.toml", "[cluster]", "remote_job_dir", "NANO3_TEST_UNSET_VAR", "oc.env:VAR,default"],
    ),
    (
        "override-unknown-key",
        SLURM_OK,
        ["-r", "cluster", "-d", "--stages", "pretrain", "train.train_iterz=5"],
        ["pretrain/config/tiny.yaml", "train.train_iterz", "does not define", "did you mean 'train.train_iters'"],
    ),
    (
        "override-unknown-env-key",
        SLURM_OK,
        ["-r", "cluster", "-d", "run.env.gpus_per_nod=8"],
        ["command line", "run.env.gpus_per_nod", "slurm", "did you mean 'gpus_per_node'"],
    ),
    (
        "override-not-key-value",
        SLURM_OK,
        ["-r", "cluster", "-d", "train.train_iters"],
        ["command line", "key.path=value"],
    ),
    (
        "unknown-config",
        SLURM_OK,
        ["-r", "cluster", "-d", "-c", "tinyy"],
        ["--config", "no config named 'tinyy'", "did you mean 'tiny'"],
    ),
    (
        "unknown-stage",
        SLURM_OK,
        ["-r", "cluster", "-d", "--stages", "pretrian"],
        ["--stages", "pretrian", "did you mean 'pretrain'"],
    ),
    (
        "run-and-batch",
        SLURM_OK,
        ["-r", "cluster", "-b", "cluster", "-d"],
        ["--run and --batch"],
    ),
    (
        "ssh-without-host",
        SLURM_OK + 'tunnel = "ssh"\nuser = "me"\nremote_job_dir = "/j"\n',
        ["-r", "cluster", "-d"],
        ["env.toml", "[cluster]", "host", "tunnel = 'ssh'"],
    ),
]


@pytest.mark.parametrize(("case", "env_text", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(isolated: Path, case: str, env_text: str, args: list[str], expected: list[str]) -> None:
    write_env(isolated, env_text)
    before = tree(isolated)
    result = run_cli(args, isolated)
    assert "Failed to create" not in result.stderr
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    assert result.stdout == ""
    assert tree(isolated) == before, "bad input must leave nothing behind"


def test_unknown_profile_lists_the_known_ones(isolated: Path) -> None:
    write_env(isolated, SLURM_OK)
    result = run_cli(["-r", "clustr", "-d"], isolated)
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "no profile named 'clustr'" in result.stderr and "did you mean 'cluster'" in result.stderr


def test_verbose_shows_the_traceback(isolated: Path) -> None:
    write_env(isolated, '[c]\nexecutor = "slurn"\n')
    result = run_cli(["-r", "c", "-d", "--verbose"], isolated)
    assert result.code != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr

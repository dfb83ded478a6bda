"""Profile → NeMo-Run executor details that the golden plans do not already pin."""

from __future__ import annotations

import pytest

from blocks.errors import ConfigError
from blocks.executors import ExecutionTarget, build_executor, build_packager
from blocks.profiles import parse_profile


def profile(**data: object):
    return parse_profile(dict(data), file="env.toml", section="p")


def test_local_torchrun_only_for_torchrun_stages() -> None:
    four = profile(executor="local", nproc_per_node=4)
    trainer = build_executor(ExecutionTarget(four, launcher="torchrun"))
    assert trainer.launcher == "torchrun" and trainer.ntasks_per_node == 4
    # Data prep, convert, eval: one process, whatever nproc_per_node says.
    single = build_executor(ExecutionTarget(four))
    assert single.launcher is None and single.ntasks_per_node == 1
    # One process on this machine: the script itself, as `python script.py` would run it.
    one = build_executor(ExecutionTarget(profile(executor="local"), launcher="torchrun"))
    assert one.launcher is None and one.ntasks_per_node == 1


def test_local_executors_never_hold_secrets() -> None:
    # NeMo-Run writes env_vars into the experiment folder: a local job inherits its secrets from
    # the submitting process instead (tests/test_stage_task.py runs one).
    p = profile(executor="local", env_vars={"HF_TOKEN": "hf_real", "A": "1"})
    assert build_executor(ExecutionTarget(p)).env_vars == {"A": "1"}
    assert build_executor(ExecutionTarget(p, reveal_secrets=False)).env_vars == {"A": "1"}


def test_slurm_tasks_follow_the_stage_launcher() -> None:
    gpus = profile(executor="slurm", account="a", gpus_per_node=4)
    trainer = build_executor(ExecutionTarget(gpus, launcher="torchrun"))
    assert trainer.ntasks_per_node == 4 and trainer.gpus_per_node == 4  # torchrun --nproc-per-node 4
    single = build_executor(ExecutionTarget(gpus))
    assert single.ntasks_per_node == 1, "a single-process stage must not start once per GPU"
    cpu = build_executor(ExecutionTarget(profile(executor="slurm", account="a", gpus_per_node=0)))
    assert cpu.ntasks_per_node == 1 and cpu.gpus_per_node is None


def test_startup_commands_where_the_executor_can_run_them() -> None:
    slurm = build_executor(ExecutionTarget(profile(executor="slurm", account="a", startup_commands=["module load x"])))
    assert "module load x" in slurm.setup_lines
    with pytest.raises(ConfigError, match="startup_commands is not supported by executor 'local'"):
        build_executor(ExecutionTarget(profile(executor="local", startup_commands=["echo hi"]), profile_name="p"))


def test_ssh_tunnel_fields() -> None:
    ex = build_executor(
        ExecutionTarget(
            profile(
                executor="slurm",
                account="a",
                tunnel="ssh",
                host="login",
                user="me",
                port=2222,
                identity="~/.ssh/id_ed25519",
                remote_job_dir="/lustre/me",
            )
        )
    )
    tunnel = ex.tunnel
    assert type(tunnel).__name__ == "SSHTunnel"
    assert (tunnel.host, tunnel.user, tunnel.port, tunnel.job_dir) == ("login", "me", 2222, "/lustre/me")
    assert tunnel.identity.endswith("/.ssh/id_ed25519") and "~" not in tunnel.identity


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"packager": "none"}, "Packager"),
        ({"packager": "git", "subpath": "src", "include_submodules": False, "include_pattern": "data/*.json"}, "GitArchivePackager"),
        ({"packager": "pattern", "include_pattern": "recipes/**/*.py", "relative_path": "/repo"}, "PatternPackager"),
        ({"packager": "hybrid", "packager_include_pattern": "generated/*"}, "HybridPackager"),
    ],
)
def test_packagers(fields: dict, expected: str) -> None:
    packager = build_packager(profile(executor="slurm", account="a", **fields))
    assert type(packager).__name__ == expected
    if expected == "GitArchivePackager":
        assert (packager.subpath, packager.include_submodules, packager.include_pattern) == ("src", False, "data/*.json")
    if expected == "PatternPackager":
        assert (packager.include_pattern, packager.relative_path) == ("recipes/**/*.py", "/repo")
    if expected == "HybridPackager":
        assert sorted(packager.sub_packagers) == ["code", "extra"]
        assert type(packager.sub_packagers["code"]).__name__ == "GitArchivePackager"
        assert packager.sub_packagers["extra"].include_pattern == "generated/*"


def test_pattern_packager_needs_a_pattern() -> None:
    with pytest.raises(ConfigError) as info:
        profile(executor="slurm", account="a", packager="pattern")
    assert (info.value.file, info.value.section, info.value.key) == ("env.toml", "p", "packager_include_pattern")


@pytest.mark.parametrize(("executor", "module"), [("skypilot", "sky"), ("kuberay", "kubernetes")])
def test_missing_sdk_is_a_clear_error(executor: str, module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ConfigError) as info:
        build_executor(ExecutionTarget(profile(executor=executor), profile_name="p"))
    assert f"executor '{executor}' needs the '{module}' package" in str(info.value)
    assert info.value.section == "p"
    assert info.value.hint and info.value.hint.startswith("pip install")

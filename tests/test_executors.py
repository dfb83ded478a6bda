"""Profile → NeMo-Run executor details that the golden plans do not already pin."""

from __future__ import annotations

import pytest

from blocks.errors import ConfigError
from blocks.executors import ExecutionTarget, build_executor, build_packager
from blocks.profiles import parse_profile


def profile(**data: object):
    return parse_profile(dict(data), file="env.toml", section="p")


def test_local_uses_torchrun_only_for_several_processes() -> None:
    one = build_executor(ExecutionTarget(profile(executor="local")))
    assert one.launcher is None and one.ntasks_per_node == 1
    many = build_executor(ExecutionTarget(profile(executor="local", nproc_per_node=4)))
    assert many.launcher == "torchrun" and many.ntasks_per_node == 4
    # A stage that asks for torchrun gets it with one process too.
    assert build_executor(ExecutionTarget(profile(executor="local"), launcher="torchrun")).launcher == "torchrun"


def test_local_env_vars_include_secrets_when_running_and_redacted_when_planning() -> None:
    p = profile(executor="local", env_vars={"HF_TOKEN": "hf_real", "A": "1"})
    assert build_executor(ExecutionTarget(p)).env_vars == {"A": "1", "HF_TOKEN": "hf_real"}
    assert build_executor(ExecutionTarget(p, reveal_secrets=False)).env_vars == {"A": "1", "HF_TOKEN": "********"}


def test_slurm_ntasks_defaults_to_gpus() -> None:
    ex = build_executor(ExecutionTarget(profile(executor="slurm", account="a", gpus_per_node=4)))
    assert ex.ntasks_per_node == 4 and ex.gpus_per_node == 4
    cpu = build_executor(ExecutionTarget(profile(executor="slurm", account="a", gpus_per_node=0)))
    assert cpu.ntasks_per_node == 1 and cpu.gpus_per_node is None


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
    with pytest.raises(ConfigError, match="include_pattern"):
        build_packager(profile(executor="slurm", account="a", packager="pattern"))


@pytest.mark.parametrize(("executor", "module"), [("skypilot", "sky"), ("kuberay", "kubernetes")])
def test_missing_sdk_is_a_clear_error(executor: str, module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ConfigError) as info:
        build_executor(ExecutionTarget(profile(executor=executor)))
    assert f"executor '{executor}' needs the '{module}' package" in str(info.value)
    assert info.value.hint and info.value.hint.startswith("pip install")

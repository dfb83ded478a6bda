"""env.toml as the seeds document it: discovery, extends, reserved sections, interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from blocks.env_toml import discover_env_file, find_env_file, load_env_file
from blocks.errors import ConfigError
from tests.conftest import write_env


def test_walk_up_finds_the_nearest_env_toml(isolated: Path) -> None:
    outer = write_env(isolated, "[a]\nexecutor = 'local'\n")
    deep = isolated / "x" / "y"
    deep.mkdir(parents=True)
    assert find_env_file(deep) == outer
    inner = write_env(isolated / "x", "[b]\nexecutor = 'local'\n")
    assert find_env_file(deep) == inner


def test_env_var_wins_over_walk_up(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_env(isolated, "[a]\nexecutor = 'local'\n")
    other = write_env(isolated, "[b]\nexecutor = 'local'\n", name="env.slurm.toml")
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(other))
    env = discover_env_file()
    assert env is not None and env.profile_names == ["b"]


def test_env_var_pointing_nowhere_is_an_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(isolated / "missing.toml"))
    with pytest.raises(ConfigError, match="NEMOTRON_ENV_FILE points at .*missing.toml"):
        find_env_file()


def test_no_env_toml_is_none(isolated: Path) -> None:
    assert discover_env_file(isolated) is None


def test_extends_is_recursive_and_merges_tables_key_by_key(isolated: Path) -> None:
    env = load_env_file(
        write_env(
            isolated,
            """
[base]
executor = "slurm"
account = "acct"
time = "04:00:00"
mounts = ["/a:/a", "/b:/b"]
env_vars = { A = "1", B = "2" }

[mid]
extends = "base"
nodes = 4
env_vars = { B = "two", C = "3" }

[leaf]
extends = "mid"
nodes = 16
mounts = ["/c:/c"]
""",
        )
    )
    leaf = env.profile("leaf")
    assert leaf["nodes"] == 16 and leaf["account"] == "acct" and leaf["time"] == "04:00:00"
    assert leaf["env_vars"] == {"A": "1", "B": "two", "C": "3"}
    assert leaf["mounts"] == ["/c:/c"]  # lists are replaced, not concatenated
    assert "extends" not in leaf


def test_reserved_sections_are_not_profiles(isolated: Path) -> None:
    env = load_env_file(
        write_env(
            isolated,
            """
[wandb]
project = "p"
[artifacts]
root = "/tmp/a"
[cache]
git_dir = "/tmp/g"
[cli]
theme = "github-light"
[local]
executor = "local"
""",
        )
    )
    assert env.profile_names == ["local"]
    assert env.section("wandb") == {"project": "p"}
    with pytest.raises(ConfigError, match=r"\[wandb\] is a reserved section"):
        env.profile("wandb")


def test_interpolation_from_environment_and_defaults(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANO3_TEST_ACCOUNT", "from-env")
    monkeypatch.delenv("NANO3_UNSET", raising=False)
    env = load_env_file(
        write_env(
            isolated,
            """
[c]
executor = "slurm"
account = "${oc.env:NANO3_TEST_ACCOUNT}"
partition = "${oc.env:NANO3_UNSET,batch}"
remote_job_dir = "${oc.env:NANO3_UNSET,${oc.env:NANO3_TEST_ACCOUNT}/jobs}"
""",
        )
    )
    c = env.profile("c")
    assert (c["account"], c["partition"], c["remote_job_dir"]) == ("from-env", "batch", "from-env/jobs")


def test_inheritance_happens_before_interpolation(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that sets a key its parent reads from an unset variable is fine."""
    monkeypatch.delenv("NANO3_UNSET", raising=False)
    env = load_env_file(
        write_env(
            isolated,
            """
[parent]
executor = "slurm"
account = "${oc.env:NANO3_UNSET}"
[child]
extends = "parent"
account = "mine"
""",
        )
    )
    assert env.profile("child")["account"] == "mine"
    with pytest.raises(ConfigError, match=r"\[parent\] account: .*NANO3_UNSET"):
        env.profile("parent")


def test_a_broken_profile_does_not_block_the_others(isolated: Path) -> None:
    env = load_env_file(write_env(isolated, "[ok]\nexecutor='local'\n[bad]\nextends='nowhere'\n"))
    assert env.profile("ok") == {"executor": "local"}


def test_a_section_only_extended_and_without_executor_is_a_base(isolated: Path) -> None:
    env = load_env_file(
        write_env(
            isolated,
            """
[common]
time = "01:00:00"
env_vars = { A = "1" }
[cluster]
extends = "common"
executor = "slurm"
account = "a"
[lonely]
time = "01:00:00"
""",
        )
    )
    assert env.is_base("common") and not env.is_base("cluster") and not env.is_base("lonely")
    assert env.runnable_profiles() == ["cluster", "lonely"]

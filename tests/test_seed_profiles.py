"""Every profile shape the execution documentation shows loads and dry-runs, as written.

One env.toml per shape under tests/fixtures/seed_profiles/ (the documented keys, values of our
own). Each test reads its file through the env.toml loader, checks what was assumed for the keys
the shape leaves out, and plans a stage through NeMo-Run the way `-r/-b PROFILE -d` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from blocks.env_toml import load_env_file
from blocks.errors import ConfigError
from blocks.executors import ExecutionTarget, build_executor, build_packager
from blocks.profiles import DGXCloudProfile, LocalProfile, SlurmProfile, _Profile, parse_profile
from flows.run_options import RunOptions, resolve_context, stage_jobs
from tasks.stages import STAGES_BY_ID
from tasks.submission import SubmissionPlan, plan_submission

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "seed_profiles"
LOGIN = "fixture-login"


@pytest.fixture(autouse=True)
def quiet_home(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HOME of the test's own (no ~/.ssh/config) and a known local user name; NeMo-Run's home
    under it, so a local-tunnel job folder never lands in the real ~/.nemo_run."""
    from nemo_run.config import get_nemorun_home, set_nemorun_home

    home = isolated.parent / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LOGNAME", LOGIN)
    previous = get_nemorun_home()
    set_nemorun_home(str(home / ".nemo_run"))
    yield home
    set_nemorun_home(previous)


def load(shape: str, section: str) -> _Profile:
    env = load_env_file(FIXTURES / f"{shape}.toml")
    return parse_profile(env.profile(section), file=str(env.path), section=section)


def assumed_keys(profile: _Profile) -> list[str]:
    return [key for key, _, _ in profile.assumed()]


def plan(monkeypatch: pytest.MonkeyPatch, shape: str, section: str, stage: str = "sft", *, batch: bool = False) -> SubmissionPlan:
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(FIXTURES / f"{shape}.toml"))
    mode = {"batch": section} if batch else {"run": section}
    context = resolve_context(RunOptions(config="tiny", dry_run=True, **mode))
    (job,) = stage_jobs(context, [STAGES_BY_ID[stage]])
    return plan_submission(job, detached=batch)


def test_every_shape_has_a_fixture() -> None:
    shapes = {path.stem for path in FIXTURES.glob("*.toml")}
    assert shapes == {
        "quick_start", "inheritance", "slurm", "ssh_tunnel", "partition_overrides", "dgxcloud", "lepton", "docker",
        "container_build", "packager_git", "packager_pattern", "packager_hybrid", "packager_none", "field_reference",
        "full_example", "ray",
    }


def test_quick_start(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load("quick_start", "hpc")
    assert isinstance(profile, SlurmProfile) and profile.assumed() == []
    text = plan(monkeypatch, "quick_start", "hpc").submission
    for line in ("#SBATCH --account=llm-research", "#SBATCH --partition=gpu-long", "#SBATCH --nodes=2"):
        assert line in text
    assert "--nproc-per-node 4" in text  # ntasks_per_node is torchrun's process count


def test_inheritance(monkeypatch: pytest.MonkeyPatch) -> None:
    wide = load("inheritance", "hpc-wide")
    assert (wide.account, wide.partition, wide.nodes, wide.gpus_per_node, wide.time) == (
        "llm-research", "a100", 12, 4, "10:00:00"
    )
    text = plan(monkeypatch, "inheritance", "hpc-wide").submission
    assert "#SBATCH --nodes=12" in text and "#SBATCH --time=10:00:00" in text
    assert "#SBATCH --account=llm-research" in text


def test_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load("slurm", "hpc").assumed() == []
    result = plan(monkeypatch, "slurm", "hpc")
    text = result.submission
    for line in ("#SBATCH --nodes=3", "#SBATCH --gpus-per-node=4", "#SBATCH --time=06:30:00", "#SBATCH --partition=a100"):
        assert line in text
    # No image in the profile nor in tiny.yaml: plain Slurm, so the mounts wait for a container_image.
    assert "--container-mounts" not in text


def test_ssh_tunnel_gets_a_job_folder_in_the_home_on_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load("ssh_tunnel", "hpc")
    assert isinstance(profile, SlurmProfile)
    ((key, value, why),) = profile.assumed()
    assert (key, value) == ("remote_job_dir", "/home/jdoe/.nemo_run/experiments")
    assert "tunnel = 'ssh'" in why
    result = plan(monkeypatch, "ssh_tunnel", "hpc")
    tunnel = result.executor["tunnel"]
    assert tunnel["class"] == "SSHTunnel"
    assert (tunnel["host"], tunnel["user"], tunnel["job_dir"]) == (
        "hpc-login.example.net", "jdoe", "/home/jdoe/.nemo_run/experiments"
    )
    assert tunnel["identity"] == os.path.join(os.environ["HOME"], ".ssh/id_ed25519_hpc")
    assert "#SBATCH --output=/home/jdoe/.nemo_run/experiments/nano3-sft/<experiment-id>/sft/" in result.submission


def test_ssh_user_defaults_like_ssh(isolated: Path, quiet_home: Path) -> None:
    """No `user`: the User ~/.ssh/config gives the host, else the local user name, as ssh logs in."""
    text = (FIXTURES / "ssh_tunnel.toml").read_text().replace('user = "jdoe"\n', "")
    env_file = isolated / "env.toml"
    env_file.write_text(text)
    env = load_env_file(env_file)
    profile = parse_profile(env.profile("hpc"), file=str(env_file), section="hpc")
    assumed = {key: (value, why) for key, value, why in profile.assumed()}
    assert assumed["user"][0] == LOGIN and "local user name" in assumed["user"][1]
    assert assumed["remote_job_dir"][0] == f"/home/{LOGIN}/.nemo_run/experiments"
    tunnel = build_executor(ExecutionTarget(profile, reveal_secrets=False)).tunnel
    assert (tunnel.user, tunnel.job_dir) == (LOGIN, f"/home/{LOGIN}/.nemo_run/experiments")

    (quiet_home / ".ssh").mkdir()
    (quiet_home / ".ssh" / "config").write_text("Host hpc-login.*\n    User cluster-jd\n")
    assumed = {key: (value, why) for key, value, why in profile.assumed()}
    assert assumed["user"][0] == "cluster-jd" and "~/.ssh/config" in assumed["user"][1]
    tunnel = build_executor(ExecutionTarget(profile, reveal_secrets=False)).tunnel
    assert (tunnel.user, tunnel.job_dir) == ("cluster-jd", "/home/cluster-jd/.nemo_run/experiments")


def test_partition_overrides_without_an_account(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load("partition_overrides", "hpc")
    assert assumed_keys(profile) == ["account"]
    attached = plan(monkeypatch, "partition_overrides", "hpc").submission
    detached = plan(monkeypatch, "partition_overrides", "hpc", batch=True).submission
    assert "#SBATCH --partition=debug" in attached and "#SBATCH --partition=preemptible" in detached
    for text in (attached, detached):
        assert "--account" not in text
        assert "#SBATCH --job-name=nano3.sft" in text


def test_dgxcloud_with_custom_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    for section in ("dgxc", "dgxc-runai"):
        assert load("dgxcloud", section).assumed() == []
    result = plan(monkeypatch, "dgxcloud", "dgxc-runai")
    view = result.executor
    assert view["class"] == "DGXCloudExecutor"
    assert view["custom_spec"] == {"schedulerName": "fixture-scheduler"}
    assert view["kube_apiserver_url"] == "https://k8s.dgxc.example.net"
    assert view["pvcs"] == [{"claimName": "fixture-workspace", "path": "/workspace", "readOnly": False}]
    assert "fixture-client-secret-value" not in str(view) + result.submission


def test_lepton(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load("lepton", "lep").assumed() == []
    view = plan(monkeypatch, "lepton", "lep").executor
    assert view["class"] == "LeptonExecutor"
    assert (view["node_group"], view["resource_shape"], view["shared_memory_size"]) == (
        "fixture-nodes", "gpu.4xa100-80gb", 32768
    )
    assert view["mounts"] == [{"path": "/lepton-share", "mount_path": "/lepton-share"}]
    assert view["pre_launch_commands"] == ["pip install fixture-extra"]


def test_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load("docker", "box").assumed() == []
    result = plan(monkeypatch, "docker", "box")
    assert (result.executor["class"], result.executor["num_gpus"], result.executor["runtime"]) == ("DockerExecutor", 2, "nvidia")
    assert result.executor["volumes"] == ["/srv/datasets:/datasets"]
    assert result.submission.startswith("docker run nvcr.io/nvidia/nemo:25.09 ")


def test_container_build_keys_are_accepted_and_reported_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load("container_build", "hpc")
    assert assumed_keys(profile) == ["account", "build_partition", "build_time", "build_cache_dir"]
    text = plan(monkeypatch, "container_build", "hpc").submission
    assert "#SBATCH --partition=a100" in text and "--account" not in text
    assert "cpu-only" not in text and "01:15:00" not in text


def test_packager_git(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load("packager_git", "hpc")
    assert assumed_keys(profile) == ["account"]
    view = plan(monkeypatch, "packager_git", "hpc").executor
    assert view["packager"]["class"] == "GitArchivePackager"
    assert view["packager"]["include_submodules"] is True


def test_packager_pattern_takes_the_documented_key(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load("packager_pattern", "hpc")
    assumed = {key: value for key, value, _ in profile.assumed()}
    assert assumed == {"relative_path": str(isolated), "account": ""}
    view = plan(monkeypatch, "packager_pattern", "hpc").executor
    assert view["packager"]["class"] == "PatternPackager"
    assert (view["packager"]["include_pattern"], view["packager"]["relative_path"]) == ("recipes/**/*.py", str(isolated))
    # The key the packager section of the git docs uses still works, and a list gets one base per pattern.
    both = parse_profile(
        {"executor": "slurm", "packager": "pattern", "include_pattern": ["a/*.py", "b/*.yaml"]}, file="env.toml", section="p"
    )
    packager = build_packager(both)
    assert (packager.include_pattern, packager.relative_path) == (["a/*.py", "b/*.yaml"], [str(isolated)] * 2)


def test_packager_pattern_key_clashes_are_one_clear_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_profile(
            {"executor": "slurm", "packager": "pattern", "include_pattern": "a/*", "packager_include_pattern": "b/*"},
            file="env.toml",
            section="p",
        )
    assert (info.value.file, info.value.section, info.value.key) == ("env.toml", "p", "packager_include_pattern")
    with pytest.raises(ConfigError) as info:
        parse_profile(
            {"executor": "slurm", "packager": "pattern", "packager_include_pattern": ["a/*", "b/*"], "relative_path": ["/x"]},
            file="env.toml",
            section="p",
        )
    assert info.value.key == "relative_path" and "one per pattern" in str(info.value)


def test_packager_hybrid_alone_ships_the_git_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load("packager_hybrid", "hpc")
    assert assumed_keys(profile) == ["packager_include_pattern", "account"]
    view = plan(monkeypatch, "packager_hybrid", "hpc").executor
    assert view["packager"]["class"] == "HybridPackager"
    assert list(view["packager"]["sub_packagers"]) == ["code"]
    assert view["packager"]["sub_packagers"]["code"]["class"] == "GitArchivePackager"


def test_packager_none(monkeypatch: pytest.MonkeyPatch) -> None:
    assert assumed_keys(load("packager_none", "hpc")) == ["account"]
    view = plan(monkeypatch, "packager_none", "hpc").executor
    assert view["packager"]["class"] == "Packager"


def test_field_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load("field_reference", "reference").assumed() == []
    result = plan(monkeypatch, "field_reference", "reference")
    text = result.submission
    for line in ("#SBATCH --account=llm-research", "#SBATCH --partition=debug", "#SBATCH --mem=0", "#SBATCH --exclusive"):
        assert line in text
    assert "--container-image /scratch/jdoe/images/nano3.sqsh" in text
    assert "module load cuda" in text
    assert result.executor["tunnel"]["job_dir"] == "/scratch/jdoe/nemo-jobs"


FULL_EXAMPLE = [
    ("local", "sft", []),
    ("hpc", "eval", []),
    ("train", "pretrain", []),
    ("train-wide", "pretrain", []),
    ("prep", "data_prep/pretrain", []),
    ("rl", "rl", []),
    ("dgxc", "sft", ["kube_apiserver_url"]),
    ("lep", "sft", []),
]


@pytest.mark.parametrize(("section", "stage", "assumed"), FULL_EXAMPLE, ids=[s[0] for s in FULL_EXAMPLE])
def test_full_example(monkeypatch: pytest.MonkeyPatch, section: str, stage: str, assumed: list[str]) -> None:
    profile = load("full_example", section)
    assert assumed_keys(profile) == assumed
    result = plan(monkeypatch, "full_example", section, stage)
    assert "fixture-app-secret-value" not in str(result.executor) + result.submission
    if isinstance(profile, LocalProfile):
        assert "torchrun" in result.submission and "--nproc-per-node 4" in result.submission
    if section == "train-wide":
        assert "#SBATCH --nodes=6" in result.submission and "#SBATCH --time=09:00:00" in result.submission
    if section == "prep":
        assert "#SBATCH --partition=cpu-only" in result.submission and "#SBATCH --cpus-per-task=48" in result.submission
    if section == "rl":
        assert "--container-image /scratch/jdoe/images/nano3-rl.sqsh" in result.submission
    if isinstance(profile, DGXCloudProfile):
        # NeMo-Run's executor requires the field and never reads it: the API is reached through base_url.
        assert result.executor["kube_apiserver_url"] == ""
        assert result.executor["client_id"] == "fixture-app"


def test_ray_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    lepton = plan(monkeypatch, "ray", "lep-ray", "rl").executor
    assert (lepton["class"], lepton["nodes"], lepton["gpus_per_node"]) == ("LeptonExecutor", 3, 4)

    dgx = load("ray", "dgxc-ray")
    assert isinstance(dgx, DGXCloudProfile)
    assert assumed_keys(dgx) == ["kube_apiserver_url"]
    # Loads (the recipe's run.env could still give pvcs), but a plan needs a PVC to stage the job
    # on, and no claim name can be guessed: one error naming the key, with the fix.
    with pytest.raises(ConfigError) as info:
        plan(monkeypatch, "ray", "dgxc-ray", "rl")
    assert (info.value.section, info.value.key) == ("dgxc-ray", "pvcs")
    assert "/workspace/runs" in info.value.message and 'path = "/workspace"' in (info.value.hint or "")

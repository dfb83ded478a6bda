"""Backend megatron: what is checkable without GPUs or NeMo containers is checked here.

- every stage's configs load through the project's own loaders and pick a runtime that exists;
- the plan of every stage on Slurm, DGX Cloud and Lepton is pinned by a golden file
  (tests/golden/megatron/, UPDATE_GOLDEN=1 to rewrite after review);
- the recipe's declared resources reach every executor: no launcher falls back to one node;
- the megatron scripts stop with one line naming the container they need.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from blocks.errors import ConfigError
from flows.run_options import RunOptions, resolve_context, stage_jobs
from recipes.nano3 import megatron_support as mb
from tasks.stages import PROJECT_ROOT, STAGES, STAGES_BY_ID
from tests.conftest import assert_golden, run_cli, write_env
from tests.test_dry_run_golden import ENV_TOML, SECRETS, plan_text

EXECUTORS = {"slurm": "cluster-container", "dgxcloud": "dgxcloud", "lepton": "lepton"}
MEGATRON_CONFIGS = ("default", "megatron_tiny")
#: What each stage's `default` config asks for: image, nodes, GPUs per node.
DEFAULT_RESOURCES = {
    "pretrain": ("nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", 2, 8),
    "sft": ("nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", 1, 8),
    "rl": ("nvcr.io/nvidia/nemo-rl:v0.4.0.nemotron_3_nano", 2, 8),
    "convert": ("nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", 1, 8),
    "eval": ("nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", 1, 8),
}


def jobs_for(isolated: Path, config: str, stages=STAGES, overrides: tuple[str, ...] = (), run: str = "cluster"):  # noqa: ANN001, ANN201
    write_env(isolated, ENV_TOML)
    context = resolve_context(RunOptions(config=config, run=run, dry_run=True, overrides=overrides))
    return stage_jobs(context, list(stages))


@pytest.mark.parametrize("executor", list(EXECUTORS))
@pytest.mark.parametrize("stage", [s.id for s in STAGES])
def test_default_plans(isolated: Path, stage: str, executor: str) -> None:
    text = plan_text(isolated, stage, run=EXECUTORS[executor], config="default")
    assert_golden(f"megatron/{executor}/{STAGES_BY_ID[stage].slug}.txt", text)


@pytest.mark.parametrize("config", ["tiny", *MEGATRON_CONFIGS])
def test_configs_load_and_pick_a_runtime_that_exists(isolated: Path, config: str) -> None:
    stages = [s for s in STAGES if (s.config_dir / f"{config}.yaml").is_file()]
    for job in jobs_for(isolated, config, stages):
        declared = OmegaConf.load(job.config_file).run.backend
        assert job.stage.backend == declared, job.config_file
        assert job.stage.script_path.is_file(), job.stage.script_path


@pytest.mark.parametrize("config", MEGATRON_CONFIGS)
def test_megatron_configs_speak_the_recipes_keys(config: str) -> None:
    from recipes.nano3.rl.train_megatron import NEMO_RL_FIELDS

    for stage in ("pretrain", "sft"):
        cfg = OmegaConf.load(STAGES_BY_ID[stage].config_dir / f"{config}.yaml")
        assert set(cfg.train) - {"precision"} <= set(mb.TRAIN_FIELDS), (stage, config)
        assert str(cfg.recipe.target).startswith("megatron.bridge.recipes.nemotronh.")
    pretrain = OmegaConf.load(STAGES_BY_ID["pretrain"].config_dir / f"{config}.yaml")
    assert set(pretrain.model) <= set(mb.HF_CONFIG_KEYS) | {"num_layers"}
    rl = OmegaConf.load(STAGES_BY_ID["rl"].config_dir / f"{config}.yaml")
    used = {f"{block}.{key}" for block in ("grpo", "train") for key in rl[block]}
    assert used <= set(NEMO_RL_FIELDS), used - set(NEMO_RL_FIELDS)
    # NeMo-RL's cluster size comes from the Ray cluster of run.env's nodes: declared once, never twice.
    assert set(rl.nemo_rl) == {"base_config"}, set(rl.nemo_rl)


def test_settings_reach_the_fields_each_megatron_bridge_version_has() -> None:
    """Megatron-Bridge skips unknown override keys with a warning, so the version-dependent names are set here."""
    from types import SimpleNamespace

    pretrain_25_11 = SimpleNamespace(sequence_length=8192)  # MCore's GPTDatasetConfig field
    newer = SimpleNamespace(seq_length=8192, sequence_length=8192)
    finetuning = SimpleNamespace(seq_length=2048)
    assert mb._dataset_length_fields(pretrain_25_11) == ["sequence_length"]
    assert mb._dataset_length_fields(newer) == ["seq_length", "sequence_length"]
    assert mb._dataset_length_fields(finetuning) == ["seq_length"]
    assert mb._model_field(SimpleNamespace(hybrid_override_pattern=None), "hybrid_override_pattern") == "hybrid_override_pattern"
    renamed = SimpleNamespace(hybrid_override_pattern=None, hybrid_layer_pattern="M*")
    assert mb._model_field(renamed, "hybrid_override_pattern") == "hybrid_layer_pattern"
    fields = {field for targets in mb.TRAIN_FIELDS.values() for field in targets}
    assert not any(field.startswith("dataset.") for field in fields)
    assert "scheduler.min_lr" not in fields  # SchedulerConfig has none; the scheduler reads optimizer.min_lr


def test_megatron_tiny_is_genuinely_small() -> None:
    """12 layers at width 1024: a few hundred million parameters at most, not an 8B model."""
    model = OmegaConf.load(STAGES_BY_ID["pretrain"].config_dir / "megatron_tiny.yaml").model
    assert len(model.hybrid_override_pattern) == model.num_layers <= 16
    assert model.hidden_size <= 1024 and model.num_moe_experts <= 8
    sft = OmegaConf.load(STAGES_BY_ID["sft"].config_dir / "megatron_tiny.yaml").model
    assert sft == model, "SFT must load the pretrained shape"


def test_megatron_chain_types(isolated: Path) -> None:
    jobs = {job.stage.id: job for job in jobs_for(isolated, "default")}
    assert jobs["pretrain"].stage.produces == "checkpoint_megatron"
    assert dict(jobs["sft"].stage.consumes)["model"] == "checkpoint_megatron"
    assert jobs["rl"].stage.launcher == "ray"
    assert dict(jobs["convert"].stage.consumes) == {"model": "checkpoint_megatron"}
    assert jobs["convert"].stage.produces == "checkpoint_hf"
    assert "baseline" not in dict(jobs["eval"].stage.consumes)


def test_mixing_backends_without_a_convert_is_refused(isolated: Path) -> None:
    sft_pretrain = [STAGES_BY_ID["pretrain"], STAGES_BY_ID["sft"]]
    with pytest.raises(ConfigError, match="stage sft \\(backend megatron\\) reads checkpoint_megatron from run.model"):
        jobs_for(isolated, "default", sft_pretrain, overrides=("pretrain:run.backend=hf",))


def test_an_unknown_backend_names_the_ones_there_are(isolated: Path) -> None:
    with pytest.raises(ConfigError, match="no runtime for backend 'megatorn'.*did you mean 'megatron'"):
        jobs_for(isolated, "default", [STAGES_BY_ID["convert"]], overrides=("run.backend=megatorn",))


@pytest.mark.parametrize("executor", list(EXECUTORS))
@pytest.mark.parametrize("stage", list(DEFAULT_RESOURCES))
def test_recipe_resources_reach_every_executor(isolated: Path, stage: str, executor: str) -> None:
    """Profiles silent on size and image: the recipe's nodes, GPUs and image reach every executor."""
    image, nodes, gpus = DEFAULT_RESOURCES[stage]
    profile = {"slurm": "plain", "dgxcloud": "dgxcloud-open", "lepton": "lepton-open"}[executor]
    text = plan_text(isolated, stage, run=profile, config="default")
    if executor == "slurm":
        assert f"#SBATCH --nodes={nodes}\n" in text and f"#SBATCH --gpus-per-node={gpus}\n" in text
        # An Experiment's srun spells it `--container-image IMAGE`, NeMo-Run's ray.sub `=IMAGE`.
        assert f"--container-image {image} " in text or f"--container-image={image} " in text
    else:
        assert f"\nnodes: {nodes}\n" in text and f"\ngpus_per_node: {gpus}\n" in text
        assert f"\ncontainer_image: {image}\n" in text
    if stage == "rl" and executor == "slurm":  # the recipe's image makes it a NeMo-Run Ray job
        assert "\nray: NeMo-Run SlurmRayJob" in text
        assert "# sbatch --parsable /shared/jobs/nano3-rl-<submission>/ray.sub" in text
        assert "python '/shared/jobs/nano3-rl-<submission>/code/recipes/nano3/rl/train_megatron.py'" in text
    elif stage == "rl" and executor == "dgxcloud":  # more than one node: a NeMo-Run Ray job
        assert "\nray: NeMo-Run DGXCloudRayJob" in text and f"\nNUM_NODES={nodes}\n" in text
        assert "python '/pvc/nemo_run/nano3-rl-<submission>/code/recipes/nano3/rl/train_megatron.py'" in text
    elif stage == "rl":
        assert "\nray: recipes/nano3/ray_cluster.py on every node; LeptonRayJob leaves" in text
        assert f"recipes/nano3/ray_cluster.py --nodes {nodes} " in text
    assert re.search(rf"^nodes: {nodes} +# recipe recipes/nano3/.*/default.yaml run.env$", text, re.M)


def test_a_profile_that_sets_the_size_and_image_wins_over_the_recipe(isolated: Path) -> None:
    """The seeds' order: the profile overlays the recipe's run.env; the command line wins over both."""
    text = plan_text(isolated, "rl", run="cluster-container", config="default")  # rl's own image is nemo-rl
    assert "#SBATCH --nodes=2\n" in text and "--container-image=nvcr.io/nvidia/nemo:25.11.nemotron_3_nano " in text
    text = plan_text(isolated, "rl", run="cluster-container", config="default",
                     overrides=("run.env.nodes=4", "run.env.container_image=rl.sqsh"))
    assert "#SBATCH --nodes=4\n" in text and "--container-image=rl.sqsh " in text


def test_secrets_are_redacted_in_every_plan(isolated: Path) -> None:
    for executor, profile in EXECUTORS.items():
        text = plan_text(isolated, "pretrain", run=profile, config="default")  # asserts no SECRETS
        if executor == "slurm":  # sourced from a 0600 file at run time, named but never written
            assert "# loads: HF_TOKEN" in text and "export HF_TOKEN" not in text
        elif executor == "dgxcloud":
            assert "client_secret: '********'" in text


MEGATRON_SCRIPTS = {
    "pretrain/train_megatron.py": "Megatron-Bridge",
    "sft/train_megatron.py": "Megatron-Bridge",
    "rl/train_megatron.py": "NeMo-RL",
    "convert/convert_megatron.py": "Megatron-Bridge",
    "eval/evaluate_megatron.py": "lm-eval and vLLM",
}


@pytest.mark.parametrize("script", list(MEGATRON_SCRIPTS))
def test_megatron_scripts_say_which_container_they_need(isolated: Path, script: str) -> None:
    config = isolated / "config.yaml"
    config.write_text("run: {output_dir: out, work_dir: work}\n")
    path = PROJECT_ROOT / "recipes" / "nano3" / script
    proc = subprocess.run(
        [sys.executable, str(path), "--config", str(config)],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == mb.MISSING_LIBRARY_EXIT, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    container = mb.NEMO_RL_CONTAINER if script.startswith("rl/") else mb.NEMO_CONTAINER
    assert line.startswith(f"error: {Path(script).name} needs {MEGATRON_SCRIPTS[script]}") and container in line
    assert not (isolated / "out").exists(), "it stopped before touching anything"


def test_the_export_command_says_which_container_it_needs(isolated: Path) -> None:
    """The RL stage runs the export in NeMo-RL's Megatron environment through this command."""
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.nano3.megatron_support", "export-hf", str(isolated / "in"), str(isolated / "out")],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == mb.MISSING_LIBRARY_EXIT, proc.stderr
    assert "needs Megatron-Bridge (AutoBridge)" in proc.stderr and mb.NEMO_CONTAINER in proc.stderr


def test_the_whole_default_pipeline_plan_as_a_user(isolated: Path) -> None:
    write_env(isolated, ENV_TOML)
    result = run_cli(["-c", "default", "-r", "plain", "-d"], isolated)  # no image: each stage's own
    assert result.code == 0, result.stderr
    banners = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("=== ")]
    assert banners == [s.id for s in STAGES]
    assert "nvcr.io/nvidia/nemo-rl:v0.4.0.nemotron_3_nano" in result.stdout
    for secret in SECRETS:
        assert secret not in result.stdout

"""Merge order: recipe YAML run.env ⊕ profile ⊕ command-line overrides; [wandb] as run.wandb."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from blocks.errors import ConfigError
from blocks.profiles import parse_profile
from blocks.settings import WandbConfig
from flows.run_options import RunOptions, resolve_context, stage_jobs
from tasks.job_config import build_job_config, parse_overrides
from tasks.stages import STAGES, STAGES_BY_ID
from tests.conftest import write_env


def job(profile_data: dict, *overrides: str, stage: str = "pretrain", config: str = "default", wandb=None):
    profile = parse_profile(profile_data, file="env.toml", section="p")
    return build_job_config(
        STAGES_BY_ID[stage],
        config,
        profile=profile,
        profile_name="p",
        profile_origin="test",
        overrides=parse_overrides(overrides),
        wandb=wandb,
    )


def test_recipe_run_env_fills_what_the_profile_leaves_open() -> None:
    j = job({"executor": "slurm", "account": "a"})
    assert (j.profile.nodes, j.profile.gpus_per_node) == (2, 8)
    assert j.profile.container_image == "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"


def test_the_profile_overlays_the_recipe_run_env() -> None:
    j = job({"executor": "slurm", "account": "a", "nodes": 8, "time": "00:30:00", "container_image": "mine.sqsh"})
    # The seeds' order: what the profile sets wins; the recipe's run.env only fills the gaps.
    assert (j.profile.nodes, j.profile.container_image, j.profile.time) == (8, "mine.sqsh", "00:30:00")
    assert j.profile.gpus_per_node == 8  # the profile is silent: default.yaml's run.env
    sources = dict(j.field_sources)
    assert sources["nodes"] == "profile [p]"
    assert sources["gpus_per_node"] == "recipe recipes/nano3/pretrain/config/default.yaml run.env"
    # The recipe's older spelling (`container`) cannot beat the profile's `container_image` either.
    tiny = job({"executor": "local", "ntasks_per_node": 2}, config="tiny")
    assert tiny.profile.nproc_per_node == 2


def test_where_each_field_comes_from_follows_the_extends_chain(isolated: Path) -> None:
    write_env(
        isolated,
        "[cluster]\nexecutor = 'slurm'\naccount = 'acct'\nenv_vars = { A = '1' }\n"
        "[pretrain]\nextends = 'cluster'\nnodes = 2\ngpus_per_node = 8\n"
        "[pretrain-large]\nextends = 'pretrain'\nnodes = 8\n",
    )
    context = resolve_context(RunOptions(config="default", run="pretrain-large", overrides=("run.env.time=01:00:00",)))
    [j] = stage_jobs(context, [STAGES_BY_ID["pretrain"]])
    assert (j.profile.nodes, j.profile.gpus_per_node, j.profile.time) == (8, 8, "01:00:00")
    sources = dict(j.field_sources)
    assert sources["nodes"] == "profile [pretrain-large]"
    assert sources["gpus_per_node"] == "profile [pretrain-large], inherited from [pretrain]"
    assert sources["account"] == sources["env_vars.A"] == "profile [pretrain-large], inherited from [cluster]"
    assert sources["time"] == "command line run.env.time"
    assert sources["container_image"] == "recipe recipes/nano3/pretrain/config/default.yaml run.env"


def test_a_recipe_image_under_the_older_name_gives_way_to_the_profile(isolated: Path) -> None:
    config = isolated / "custom.yaml"
    config.write_text("run:\n  env:\n    container: recipe.sqsh\n    nodes: 2\ntrain: {iters: 1}\n")
    j = job({"executor": "slurm", "account": "a", "container_image": "profile.sqsh"}, config=str(config))
    assert (j.profile.container_image, j.profile.nodes) == ("profile.sqsh", 2)
    assert dict(j.field_sources)["nodes"].startswith("recipe ")


def test_overrides_win_over_everything() -> None:
    j = job({"executor": "slurm", "account": "a", "nodes": 1}, "run.env.nodes=6", "run.env.env_vars.X=1", "run.env.mem=0")
    assert j.profile.nodes == 6 and j.profile.env_vars == {"X": "1"} and j.profile.mem == "0"


def test_recipe_keys_the_executor_lacks_are_skipped() -> None:
    j = job({"executor": "local"})
    assert type(j.profile).__name__ == "LocalProfile"


def test_env_vars_merge_key_by_key(isolated: Path) -> None:
    config = isolated / "custom.yaml"
    config.write_text("run:\n  env:\n    env_vars: {A: from-yaml, B: from-yaml}\ntrain: {iters: 1}\n")
    j = job({"executor": "slurm", "account": "a", "env_vars": {"B": "from-profile"}}, config=str(config))
    assert j.profile.env_vars == {"A": "from-yaml", "B": "from-profile"}


def test_recipe_overrides_are_typed_and_env_leaves_the_recipe_config() -> None:
    j = job({"executor": "local"}, "train.train_iters=7", "train.lr=0.5", config="tiny")
    assert j.recipe_config.train.train_iters == 7 and j.recipe_config.train.lr == 0.5
    assert "env" not in j.recipe_config.run
    assert j.recipe_config.run.data == "nano3-pretrain-data:latest"


def test_wandb_arrives_as_run_wandb_without_the_key() -> None:
    wandb = WandbConfig(project="nano3", entity="team", api_key="k-secret")
    j = job({"executor": "local"}, config="tiny", wandb=wandb)
    assert OmegaConf.to_container(j.recipe_config.run.wandb) == {"project": "nano3", "entity": "team", "tags": []}
    assert "k-secret" not in j.recipe_yaml()


def test_an_override_applies_to_the_stages_that_have_the_key(isolated: Path) -> None:
    write_env(isolated, "[local]\nexecutor = 'local'\n")
    context = resolve_context(RunOptions(overrides=("train.train_iters=3", "seed=9")))
    jobs = {j.stage.id: j for j in stage_jobs(context, list(STAGES))}
    assert jobs["pretrain"].recipe_config.train.train_iters == 3
    assert jobs["sft"].recipe_config.train.train_iters == 3
    assert "train" not in jobs["data_prep/pretrain"].recipe_config
    assert jobs["data_prep/pretrain"].recipe_config.seed == 9 and jobs["pretrain"].recipe_config.seed == 9
    with pytest.raises(ConfigError, match="does not define"):
        stage_jobs(resolve_context(RunOptions(overrides=("train.nope=1",))), list(STAGES))


def test_every_stage_has_both_configs() -> None:
    for stage in STAGES:
        for name in ("tiny", "default"):
            cfg = OmegaConf.load(stage.config_dir / f"{name}.yaml")
            assert cfg.run.backend in ("hf", "megatron"), f"{stage.id}/{name}: run.backend"
            assert "env" in cfg.run, f"{stage.id}/{name}: run.env"


def test_a_run_is_resolved_once_and_handed_to_the_flow_once(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.run_options as run_options

    calls: list[RunOptions] = []
    real = run_options.resolve_context
    monkeypatch.setattr(run_options, "resolve_context", lambda options: calls.append(options) or real(options))
    stages = [STAGES_BY_ID["pretrain"], STAGES_BY_ID["sft"]]
    options = RunOptions(config="tiny", overrides=("train.train_iters=3",))
    resolved = run_options.resolve_run(options, stages)  # what the command does to check inputs
    run_options.hand_over(options, stages, resolved)
    # The flow, called next with the same plain parameters, takes it instead of resolving again...
    assert run_options.take_resolved(RunOptions(config="tiny", overrides=("train.train_iters=3",)), stages) is resolved
    assert len(calls) == 1
    # ...once: a later run (a served deployment) resolves afresh and sees what changed since.
    again = run_options.take_resolved(options, stages)
    assert again is not resolved and len(calls) == 2
    assert [j.recipe_config.train.train_iters for j in again.jobs] == [3, 3]
    # Other options or stages never take another run's resolution.
    run_options.hand_over(options, stages, resolved)
    assert run_options.take_resolved(options, stages[:1]) is not resolved


def test_an_optional_input_the_config_names_must_exist_where_going_without_it_changes_the_run(isolated: Path) -> None:
    """SFT's replayed pretraining text may be left out of a config; named, it must be there, while
    the eval's rungs and the model in service may name nothing yet."""
    from tasks.artifacts import ArtifactError, ArtifactStore
    from tasks.stage_task import resolve_inputs
    from tests.test_models_cli import publish

    store = ArtifactStore(str(isolated / "store"))
    publish(store, "nano3-sft-data", 1, kind="training_jsonl")
    publish(store, "nano3-pretrain-model", 1)
    said: list[str] = []
    sft = job({"executor": "local"}, stage="sft", config="tiny")
    with pytest.raises(ArtifactError, match="nano3-pretrain-data"):
        resolve_inputs(sft, store, {}, said.append)
    without = job({"executor": "local"}, "run.corpus=null", "replay=null", stage="sft", config="tiny")
    assert set(resolve_inputs(without, store, {}, said.append)) == {"data", "model"}
    publish(store, "nano3-model-hf", 1)
    publish(store, "nano3-pretrain-data", 1, kind="binidx")
    evaluation = job({"executor": "local"}, stage="eval", config="tiny")
    assert set(resolve_inputs(evaluation, store, {}, said.append)) == {"model", "baseline", "data", "corpus"}
    assert [line.split(" (")[0] for line in said if "names nothing yet" in line] == [
        "eval: input sft", "eval: input rl", "eval: input production"]

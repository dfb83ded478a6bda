"""The steps catalog is data: every manifest is checked against the artifact types, its stage and
its configs, and a broken manifest is one error naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from blocks.errors import ConfigError
from flows.commands.steps import TOOL_RUNNERS
from tasks.stages import ARTIFACT_TYPES, STAGES
from tasks.step_catalog import CATALOG_ROOT, TOOLS, find_step, load_catalog, load_manifest

CATALOG = load_catalog()
STAGE_STEPS = [m for m in CATALOG if m.step.stage]


def test_the_seeds_step_ids_are_there() -> None:
    ids = {m.id for m in CATALOG}
    for seed_id in (
        "data_prep/pretrain_prep",
        "data_prep/rl_prep",
        "pretrain/megatron_bridge",
        "sft/megatron_bridge",
        "rl/nemo_rl/rlvr",
        "convert/megatron_to_hf",
        "eval/model_eval",
        "env/env_toml",
    ):
        assert seed_id in ids


def test_every_stage_and_backend_runs_through_exactly_one_runnable_step() -> None:
    """A step without a backend runs its stage on every backend (its script takes both)."""
    for stage in STAGES:
        covered: list[str] = []
        for m in STAGE_STEPS:
            if m.step.stage == stage.id and m.runnable:
                covered += [m.step.backend] if m.step.backend else list(stage.runtimes)
        assert sorted(covered) == sorted(stage.runtimes), (stage.id, covered)


def test_every_type_is_in_the_one_list() -> None:
    used = {ref.type for m in CATALOG for ref in (*m.consumes, *m.produces)}
    assert used <= set(ARTIFACT_TYPES)


@pytest.mark.parametrize("manifest", STAGE_STEPS, ids=lambda m: m.id)
def test_configs_exist_select_the_backend_and_hold_the_parameters(manifest) -> None:  # noqa: ANN001
    for name in manifest.step.configs:
        path = manifest.config_path(name)
        assert path.is_file(), path
        cfg = OmegaConf.load(path)
        if manifest.step.backend:
            assert cfg.run.backend == manifest.step.backend, f"{path}: run.backend"
        for param in manifest.parameters:
            assert OmegaConf.select(cfg, param.name, default="<missing>") != "<missing>", f"{path} lacks {param.name}"


def test_tools_have_their_configs_and_a_runner() -> None:
    tools = [m for m in CATALOG if m.step.tool]
    assert {m.step.tool for m in tools} == set(TOOLS) == set(TOOL_RUNNERS)
    for manifest in tools:
        for name in manifest.step.configs:
            assert manifest.config_path(name).is_file()


def test_find_step_suggests_the_closest_id() -> None:
    assert find_step("sft/trl").step.stage == "sft"
    with pytest.raises(ConfigError, match=r"unknown step 'sft/tlr'.*did you mean 'sft/trl'"):
        find_step("sft/tlr")


GOOD = """
[step]
id = "pretrain/mine"
name = "x"
category = "pretrain"
description = "x"
stage = "pretrain"
configs = ["tiny"]
default_config = "tiny"

[[consumes]]
type = "binidx"

[[produces]]
type = "checkpoint_hf"
"""


def _manifest(tmp_path: Path, text: str, step_id: str = "pretrain/mine") -> Path:
    path = tmp_path / "steps" / step_id / "step.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_a_good_manifest_loads(tmp_path: Path) -> None:
    manifest = load_manifest(_manifest(tmp_path, GOOD), root=tmp_path / "steps")
    assert manifest.stage is not None and manifest.stage.id == "pretrain"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('type = "binidx"', 'type = "bindix"'), ["[consumes] type:", "unknown artifact type 'bindix'", "did you mean 'binidx'"]),
        (('stage = "pretrain"', 'stage = "pretrian"'), ["[step] stage:", "unknown stage 'pretrian'", "did you mean 'pretrain'"]),
        (('type = "checkpoint_hf"', 'type = "eval_results"'), ["[produces]", "stage pretrain produces checkpoint_hf"]),
        (('id = "pretrain/mine"', 'id = "pretrain/other"'), ["[step] id:", "does not match the manifest's folder"]),
        (('default_config = "tiny"', 'default_config = "big"'), ["default_config 'big' is not one of configs"]),
        (('stage = "pretrain"', 'stage = "pretrain"\ntool = "env_toml"'), ["exactly one"]),
        (('category = "pretrain"', 'category = "pretrain"\ncolour = "red"'), ["[step] colour:", "Extra inputs"]),
        (('[[produces]]\ntype = "checkpoint_hf"', ""), ["produces"]),
        (('name = "x"', 'name = "x'), ["malformed TOML"]),
    ],
    ids=["type-typo", "unknown-stage", "stage-mismatch", "id-folder", "default-config", "stage-and-tool", "unknown-key", "no-produces", "toml"],
)
def test_a_broken_manifest_is_one_error_naming_file_and_key(tmp_path: Path, change: tuple[str, str], expected: list[str]) -> None:
    path = _manifest(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_manifest(path, root=tmp_path / "steps")
    message = str(caught.value)
    assert message.startswith(str(path)), message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


def test_the_catalog_lives_in_the_package() -> None:
    assert CATALOG_ROOT.is_relative_to(Path(__file__).resolve().parent.parent / "tasks")

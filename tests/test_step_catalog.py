"""The steps catalog is data: every manifest is checked against the artifact types, its stage and
its configs, and a broken manifest is one error naming the file and the key. A stage step's
artifact types are its stage's (declared once, in tasks/stages.py): its manifest only describes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from blocks.errors import ConfigError
from flows.commands.steps import TOOL_RUNNERS
from tasks.stages import ARTIFACT_TYPES, STAGES, STAGES_BY_ID
from tasks.step_catalog import CATALOG_ROOT, TOOLS, find_step, load_catalog, load_manifest, step_runtimes

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
def test_a_stage_steps_types_are_its_stage_runtimes(manifest) -> None:  # noqa: ANN001
    """What `steps list --produces/--consumes` filters on is what the stage declares, input by input."""
    stage = STAGES_BY_ID[manifest.step.stage]
    backends = [manifest.step.backend] if manifest.step.backend else list(stage.runtimes)
    runtimes = [stage.runtimes[backend] for backend in backends]
    assert step_runtimes(stage, manifest.step.backend) == runtimes
    assert {(ref.input, ref.type) for ref in manifest.consumes} == {pair for r in runtimes for pair in r.consumes}
    assert manifest.consumed_types() == {kind for r in runtimes for _, kind in r.consumes}
    assert manifest.produced_types() == {r.produces for r in runtimes}


@pytest.mark.parametrize("manifest", STAGE_STEPS, ids=lambda m: m.id)
def test_a_stage_step_describes_every_input_and_its_output(manifest) -> None:  # noqa: ANN001
    """`steps show` says what each artifact is for the step, not only its type."""
    for ref in (*manifest.consumes, *manifest.produces):
        assert ref.description, (manifest.id, ref)
    for ref in manifest.consumes:
        assert f"run.{ref.input}" in ref.description, (manifest.id, ref)


def test_no_shipped_stage_step_restates_its_types() -> None:
    import tomllib

    for path in sorted(CATALOG_ROOT.rglob("step.toml")):
        data = tomllib.loads(path.read_text())
        if data["step"].get("stage") and not data["step"].get("requires"):
            assert "consumes" not in data and "produces" not in data, path


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

[inputs]
data = "The corpus (run.data)."

[output]
description = "A model."
"""

#: A tool declares its own types: no stage has them.
TOOL = """
[step]
id = "env/mine"
name = "x"
category = "env"
description = "x"
tool = "env_toml"
configs = ["lepton"]
default_config = "lepton"

[[consumes]]
type = "raw_jsonl"

[[produces]]
type = "env_toml"
"""

#: The stage's own types, restated: refused even where they agree.
RESTATED = '[[consumes]]\ntype = "binidx"\n\n[[produces]]\ntype = "checkpoint_hf"\n'


def _manifest(tmp_path: Path, text: str, step_id: str = "pretrain/mine") -> Path:
    path = tmp_path / "steps" / step_id / "step.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_a_good_manifest_loads(tmp_path: Path) -> None:
    manifest = load_manifest(_manifest(tmp_path, GOOD), root=tmp_path / "steps")
    assert manifest.stage is not None and manifest.stage.id == "pretrain"
    # No backend: the script takes both, so both runtimes' types, each described once.
    assert [(r.input, r.type, r.description, r.required) for r in manifest.consumes] == [
        ("data", "binidx", "The corpus (run.data).", True), ("init_from", "checkpoint_hf", "", False)]
    assert [(r.type, r.description) for r in manifest.produces] == [("checkpoint_hf", "A model."), ("checkpoint_megatron", "A model.")]


def test_a_stage_steps_backend_picks_its_runtimes_types(tmp_path: Path) -> None:
    text = GOOD.replace('stage = "pretrain"', 'stage = "pretrain"\nbackend = "megatron"')
    manifest = load_manifest(_manifest(tmp_path, text), root=tmp_path / "steps")
    assert manifest.produced_types() == {"checkpoint_megatron"} and manifest.consumed_types() == {"binidx"}
    assert manifest.stage is not None and manifest.stage.script == "train_megatron.py"


def test_a_stage_step_without_descriptions_still_has_its_types(tmp_path: Path) -> None:
    text = GOOD.split("[inputs]")[0].replace('stage = "pretrain"', 'stage = "pretrain"\nbackend = "hf"')
    manifest = load_manifest(_manifest(tmp_path, text), root=tmp_path / "steps")
    assert [(r.input, r.type, r.description) for r in manifest.consumes] == [
        ("data", "binidx", ""), ("init_from", "checkpoint_hf", "")]
    assert [(r.type, r.description) for r in manifest.produces] == [("checkpoint_hf", "")]


def test_tools_and_steps_that_cannot_run_declare_their_own_types(tmp_path: Path) -> None:
    tool = load_manifest(_manifest(tmp_path, TOOL, "env/mine"), root=tmp_path / "steps")
    assert tool.consumed_types() == {"raw_jsonl"} and tool.produced_types() == {"env_toml"}
    # A step that needs a runtime the project lacks: no stage runtime declares its types.
    needs = GOOD.split("[inputs]")[0].replace('stage = "pretrain"', 'stage = "pretrain"\nrequires = "a runtime"')
    needs += '[[consumes]]\ntype = "raw_jsonl"\n\n[[produces]]\ntype = "checkpoint_megatron"\n'
    manifest = load_manifest(_manifest(tmp_path / "r", needs), root=tmp_path / "r" / "steps")
    assert not manifest.runnable
    assert manifest.consumed_types() == {"raw_jsonl"} and manifest.produced_types() == {"checkpoint_megatron"}


def _assert_one_error(path: Path, tmp_path: Path, expected: list[str]) -> None:
    """Loading `path` fails with one ConfigError that starts with the file and says each of `expected`."""
    with pytest.raises(ConfigError) as caught:
        load_manifest(path, root=tmp_path / "steps")
    message = str(caught.value)
    assert message.startswith(str(path)), message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('stage = "pretrain"', 'stage = "pretrian"'), ["[step] stage:", "unknown stage 'pretrian'", "did you mean 'pretrain'"]),
        (('stage = "pretrain"', 'stage = "pretrain"\nbackend = "jax"'), ["[step] backend:", "Input should be 'hf' or 'megatron'"]),
        (("[inputs]", RESTATED + "[inputs]"), [
            "[consumes]", "a stage step's artifact types are its stage's",
            "stage pretrain consumes data: binidx, init_from: checkpoint_hf and produces checkpoint_hf, checkpoint_megatron (tasks/stages.py)",
            "describe them under [inputs] and [output] instead of [[consumes]]",
        ]),
        (("[inputs]", '[[produces]]\ntype = "eval_results"\n\n[inputs]'), ["[produces]", "a stage step's artifact types are its stage's"]),
        (('data = "The corpus (run.data)."', 'datta = "x"'), ["[inputs] datta:", "stage pretrain has no input 'datta'", "did you mean 'data'"]),
        (('id = "pretrain/mine"', 'id = "pretrain/other"'), ["[step] id:", "does not match the manifest's folder"]),
        (('default_config = "tiny"', 'default_config = "big"'), ["default_config 'big' is not one of configs"]),
        (('stage = "pretrain"', 'stage = "pretrain"\ntool = "env_toml"'), ["exactly one"]),
        (('category = "pretrain"', 'category = "pretrain"\ncolour = "red"'), ["[step] colour:", "Extra inputs"]),
        (('name = "x"', 'name = "x'), ["malformed TOML"]),
    ],
    ids=["unknown-stage", "unknown-backend", "restated-types", "restated-produces", "unknown-input", "id-folder",
         "default-config", "stage-and-tool", "unknown-key", "toml"],
)
def test_a_broken_manifest_is_one_error_naming_file_and_key(tmp_path: Path, change: tuple[str, str], expected: list[str]) -> None:
    path = _manifest(tmp_path, GOOD.replace(*change))
    _assert_one_error(path, tmp_path, expected)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('type = "raw_jsonl"', 'type = "raw_jsonll"'), ["[consumes] type:", "unknown artifact type 'raw_jsonll'", "did you mean 'raw_jsonl'"]),
        (('[[produces]]\ntype = "env_toml"\n', ""), ["[produces]", "a tool declares what it produces"]),
        (('tool = "env_toml"', 'tool = "env_tmol"'), ["[step] tool:", "unknown tool 'env_tmol'"]),
        (("[[consumes]]", '[inputs]\ndata = "x"\n\n[[consumes]]'), ["[inputs] this table describes a stage's artifacts; a tool declares its own"]),
    ],
    ids=["type-typo", "no-produces", "unknown-tool", "tool-with-inputs"],
)
def test_a_broken_tool_manifest_is_one_error(tmp_path: Path, change: tuple[str, str], expected: list[str]) -> None:
    path = _manifest(tmp_path, TOOL.replace(*change), "env/mine")
    _assert_one_error(path, tmp_path, expected)


def test_the_catalog_lives_in_the_package() -> None:
    assert CATALOG_ROOT.is_relative_to(Path(__file__).resolve().parent.parent / "tasks")

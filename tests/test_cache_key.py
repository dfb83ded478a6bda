"""The cache key follows the code: a stage's key covers exactly the files its job runs.

The import walk is pinned on a small package tree made here, then on the real recipes: a change
to a shared module changes the keys of exactly the stages whose scripts import it.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tasks import cache_key
from tasks.cache_key import compute_cache_key, recipe_digest, stage_sources
from tasks.stages import PROJECT_ROOT, STAGES, STAGES_BY_ID, Stage

CONFIG = {"run": {"backend": "hf", "output_dir": "/somewhere"}, "steps": 3}


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """recipes/stage/run.py importing shared modules every way a recipe can."""
    root = tmp_path / "code"
    write(root / "recipes/__init__.py")
    write(root / "recipes/shared/__init__.py")
    write(root / "recipes/shared/base.py", "from recipes.shared import deep\n")
    write(root / "recipes/shared/deep.py", "VALUE = 1\n")
    write(root / "recipes/shared/lazy.py", "VALUE = 2\n")
    write(root / "recipes/shared/sibling.py", "VALUE = 3\n")
    write(root / "recipes/shared/unused.py", "VALUE = 4\n")
    write(root / "recipes/stage/helper.py", "from ..shared import sibling\n")
    write(root / "recipes/stage/template.txt", "Hello $name\n")
    write(root / "recipes/stage/config/tiny.yaml", "steps: 3\n")
    write(root / "recipes/stage/unrelated.py", "VALUE = 5\n")
    write(root / "outside/__init__.py")
    write(root / "outside/tool.py", "VALUE = 6\n")
    write(
        root / "recipes/stage/run.py",
        "import json\n"
        "import numpy\n"
        "from recipes.shared import base\n"
        "from outside import tool\n"
        "from . import helper\n"
        "\n"
        "def main():\n"
        "    from recipes.shared.lazy import VALUE\n"
        "    return VALUE\n",
    )
    return root


def tree_stage(root: Path) -> Stage:
    return Stage(id="t/stage", folder="stage", script="run.py", consumes=(), produces="raw_jsonl", artifact="t",
                 root=root / "recipes")


def names(files: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root.resolve()).as_posix() for p in files]


def test_the_walk_follows_imports_into_recipes_only(tree: Path) -> None:
    assert names(stage_sources(tree_stage(tree), tree), tree) == [
        "recipes/__init__.py",
        "recipes/shared/__init__.py",
        "recipes/shared/base.py",
        "recipes/shared/deep.py",  # imported by an imported module
        "recipes/shared/lazy.py",  # imported inside a function
        "recipes/shared/sibling.py",  # a relative import two levels up
        "recipes/stage/helper.py",  # `from . import helper`
        "recipes/stage/run.py",
        "recipes/stage/template.txt",  # data the stage folder ships
    ]  # not: unused.py, unrelated.py, config/, outside/, numpy, json


@pytest.mark.parametrize(
    ("edited", "changes_key"),
    [
        ("recipes/shared/deep.py", True),
        ("recipes/shared/lazy.py", True),
        ("recipes/stage/template.txt", True),
        ("recipes/shared/unused.py", False),
        ("recipes/stage/unrelated.py", False),
        ("recipes/stage/config/tiny.yaml", False),  # the resolved config is keyed on its own
        ("outside/tool.py", False),
    ],
)
def test_the_key_changes_with_the_files_the_job_runs(tree: Path, edited: str, changes_key: bool) -> None:
    stage = tree_stage(tree)
    before = compute_cache_key(stage, CONFIG, {}, root=tree)
    with (tree / edited).open("a") as handle:
        handle.write("# edited\n")
    assert (compute_cache_key(stage, CONFIG, {}, root=tree) != before) is changes_key


def test_a_new_import_is_followed_in_the_same_process(tree: Path) -> None:
    stage = tree_stage(tree)
    assert "recipes/shared/unused.py" not in names(stage_sources(stage, tree), tree)
    write(tree / "recipes/shared/deep.py", "from recipes.shared import unused  # now used\n")
    assert "recipes/shared/unused.py" in names(stage_sources(stage, tree), tree)


def test_the_key_scheme_enters_the_key(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage = tree_stage(tree)
    before = compute_cache_key(stage, CONFIG, {}, root=tree)
    monkeypatch.setattr(cache_key, "KEY_SCHEME", cache_key.KEY_SCHEME + 1)
    assert compute_cache_key(stage, CONFIG, {}, root=tree) != before


def real_sources(stage_id: str, backend: str = "hf") -> list[str]:
    return names(stage_sources(STAGES_BY_ID[stage_id].for_backend(backend)), PROJECT_ROOT)


def test_data_prep_pretrain_is_keyed_on_the_modules_it_imports() -> None:
    for backend in ("hf", "megatron"):
        sources = real_sources("data_prep/pretrain", backend)
        for module in ("binidx.py", "corpus.py", "tokenizer.py", "hub.py"):
            assert f"recipes/nano3/data_prep/{module}" in sources
        assert "recipes/nano3/runtime.py" in sources and "recipes/nano3/manifest.py" in sources
    # Its megatron runtime runs on Ray: every node starts it with ray_cluster.py.
    assert "recipes/nano3/ray_cluster.py" in real_sources("data_prep/pretrain", "megatron")
    assert "recipes/nano3/ray_cluster.py" not in real_sources("data_prep/pretrain", "hf")


def test_a_stage_is_not_keyed_on_modules_it_does_not_import() -> None:
    hf, megatron = real_sources("pretrain", "hf"), real_sources("pretrain", "megatron")
    assert "recipes/nano3/data_prep/binidx.py" not in hf + megatron
    assert "recipes/nano3/hf_model.py" in hf and "recipes/nano3/megatron_support.py" not in hf
    assert "recipes/nano3/megatron_support.py" in megatron and "recipes/nano3/hf_model.py" not in megatron
    assert "recipes/nano3/pretrain/train_megatron.py" not in hf, "the other backend's script is not this one's code"


def test_configs_stay_out_and_the_eval_tasks_are_in() -> None:
    every = {name for stage in STAGES for backend in stage.runtimes for name in real_sources(stage.id, backend)}
    assert not [name for name in every if "/config/" in name]
    assert "recipes/nano3/eval/tasks/nano3_arithmetic.yaml" in real_sources("eval")
    # evaluate_megatron.py imports evaluate.py, which imports hf_model inside a function.
    assert {"recipes/nano3/eval/evaluate.py", "recipes/nano3/hf_model.py"} <= set(real_sources("eval", "megatron"))


def test_a_ray_stage_s_key_covers_the_script_its_nodes_run_first() -> None:
    assert "recipes/nano3/ray_cluster.py" in real_sources("rl", "megatron")
    assert "recipes/nano3/ray_cluster.py" not in real_sources("rl")


@pytest.fixture
def recipes_copy(tmp_path: Path) -> Path:
    """The real recipes under another root: edits there change no key of this checkout."""
    root = tmp_path / "checkout"
    shutil.copytree(PROJECT_ROOT / "recipes", root / "recipes", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def keys_at(root: Path) -> dict[tuple[str, str], str]:
    """Every stage's key on every backend, its code read under root."""
    return {
        (stage.id, backend): compute_cache_key(
            replace(stage.for_backend(backend), root=root / "recipes" / "nano3"), CONFIG, {}, root=root
        )
        for stage in STAGES
        for backend in stage.runtimes
    }


def importers(root: Path, module: Path) -> set[tuple[str, str]]:
    return {
        (stage.id, backend)
        for stage in STAGES
        for backend in stage.runtimes
        if module.resolve() in stage_sources(replace(stage.for_backend(backend), root=root / "recipes" / "nano3"), root)
    }


def test_keys_do_not_depend_on_where_the_checkout_is(recipes_copy: Path) -> None:
    here = {(s.id, b): compute_cache_key(s.for_backend(b), CONFIG, {}) for s in STAGES for b in s.runtimes}
    assert keys_at(recipes_copy) == here


SHARED = sorted(
    p.relative_to(PROJECT_ROOT).as_posix()
    for p in [*(PROJECT_ROOT / "recipes/nano3").glob("*.py"), *(PROJECT_ROOT / "recipes/nano3/data_prep").glob("*.py")]
    if p.name != "__init__.py"
)


@pytest.mark.parametrize("module", SHARED)
def test_changing_a_shared_module_changes_exactly_its_importers_keys(recipes_copy: Path, module: str) -> None:
    before = keys_at(recipes_copy)
    expected = importers(recipes_copy, recipes_copy / module)
    assert expected, f"no stage runs {module}"
    with (recipes_copy / module).open("a") as handle:
        handle.write("\n# changed\n")
    after = keys_at(recipes_copy)
    assert {stage for stage in before if before[stage] != after[stage]} == expected


def test_the_importers_of_binidx_and_hf_model(recipes_copy: Path) -> None:
    """What the walk finds, spelled out for two modules."""
    binidx = importers(recipes_copy, recipes_copy / "recipes/nano3/data_prep/binidx.py")
    assert binidx == {("data_prep/pretrain", "hf"), ("data_prep/pretrain", "megatron")}
    hf_model = importers(recipes_copy, recipes_copy / "recipes/nano3/hf_model.py")
    assert hf_model == {("pretrain", "hf"), ("sft", "hf"), ("rl", "hf"), ("convert", "hf"), ("eval", "hf"),
                        ("eval", "megatron")}


def test_recipe_digest_reads_the_sources_it_lists(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage = tree_stage(tree)
    read: list[Path] = []
    original = Path.read_bytes

    def spy(self: Path) -> bytes:
        read.append(self)
        return original(self)

    recipe_digest(stage, tree)  # parses once
    monkeypatch.setattr(Path, "read_bytes", spy)
    recipe_digest(stage, tree)
    assert read == stage_sources(stage, tree)

"""Registry aliases (`production`) and `nemotron models list|show|promote|rollback`.

An alias moves only when promoted or rolled back, each move a file of its own created
exclusively: the history is kept, two promoters that saw the same target cannot both move it,
and a rollback goes back one promotion at a time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from recipes.nano3.manifest import MANIFEST_NAME, FileEntry, Manifest
from tasks import aliases
from tasks.artifacts import ArtifactError, ArtifactStore
from tests.conftest import run_cli


def publish(store: ArtifactStore, name: str, count: int, kind: str = "checkpoint_hf") -> None:
    for number in range(count):
        data = f"{name} weights {number}\n".encode()
        folder = Path(store.root, name, f"key{number}")
        folder.mkdir(parents=True)
        (folder / "model.bin").write_bytes(data)
        manifest = Manifest(type=kind, stage="made", metrics={"score": number / 10},
                            files=[FileEntry(path="model.bin", sha256=hashlib.sha256(data).hexdigest(), size=len(data))])
        (folder / MANIFEST_NAME).write_text(manifest.model_dump_json())
        store.publish(name, str(folder), manifest, cache_key=f"key{number}")


@pytest.fixture
def store(isolated: Path) -> ArtifactStore:
    store = ArtifactStore(str(isolated / "store"))
    publish(store, "m", 3)
    return store


def test_promotions_stack_rollbacks_pop_and_the_history_is_kept(store: ArtifactStore) -> None:
    assert aliases.current(store, "m") is None
    for ref in ("m:v1", "m:v3", "m:v2"):
        aliases.promote(store, ref, reason=f"gate passed for {ref}")
    assert aliases.current(store, "m").version == "v2"  # type: ignore[union-attr]
    back = aliases.rollback(store, "m")
    assert (back.previous, back.version, back.number) == ("v2", "v3", 4)
    assert aliases.rollback(store, "m").version == "v1"
    with pytest.raises(ArtifactError, match=r"m:production has no earlier version to roll back to \(it names v1\)"):
        aliases.rollback(store, "m")
    history = aliases.moves(store, "m")
    assert [(m.number, m.action, m.previous, m.version) for m in history] == [
        (1, "promote", None, "v1"), (2, "promote", "v1", "v3"), (3, "promote", "v3", "v2"),
        (4, "rollback", "v2", "v3"), (5, "rollback", "v3", "v1"),
    ]
    assert history[2].reason == "gate passed for m:v2"
    assert store.latest("m").version == "v3", "latest is not an alias: publishing moves it, promotion does not"  # type: ignore[union-attr]
    assert aliases.aliases_of(store, "m") == {"production": "v1"}


def test_a_promotion_based_on_a_stale_look_is_refused(store: ArtifactStore) -> None:
    aliases.promote(store, "m:v1")
    seen = aliases.moves(store, "m")[-1].number
    aliases.promote(store, "m:v2", seen=seen)  # the first gate to decide wins
    with pytest.raises(aliases.AliasMoved, match="m:production moved after move 1"):
        aliases.promote(store, "m:v3", seen=seen)
    assert aliases.current(store, "m").version == "v2"  # type: ignore[union-attr]
    assert [m.version for m in aliases.moves(store, "m")] == ["v1", "v2"]


@pytest.mark.parametrize("alias", ["latest", "v2", "Prod", "a b"])
def test_an_alias_that_reads_as_a_version_is_refused(store: ArtifactStore, alias: str) -> None:
    with pytest.raises(ArtifactError, match="is not an alias name"):
        aliases.promote(store, "m:v1", alias=alias)
    assert not Path(store.root, "_registry", "m", "aliases").exists()


def test_the_models_commands(store: ArtifactStore, isolated: Path) -> None:
    publish(store, "data", 1, kind="raw_jsonl")
    env = {"NANO3_ARTIFACTS_ROOT": store.root}
    promoted = run_cli(["models", "promote", "m:v2", "-m", "passed review"], isolated, env, module="flows.cli")
    assert promoted.code == 0 and promoted.stdout.strip() == "m:production: nothing → v2 (move 1)", promoted
    run_cli(["models", "promote", "m:latest"], isolated, env, module="flows.cli")
    listed = run_cli(["models", "list"], isolated, env, module="flows.cli")
    assert listed.code == 0 and "production=v3" in listed.stdout and "data" not in listed.stdout, listed
    back = run_cli(["models", "rollback", "m"], isolated, env, module="flows.cli")
    assert back.stdout.strip() == "m:production: v3 → v2 (rolled back, move 3)", back
    shown = run_cli(["models", "show", "m"], isolated, env, module="flows.cli")
    assert shown.code == 0, shown
    assert "m:production history" in shown.stdout and "passed review" in shown.stdout and "rolled back by hand" in shown.stdout
    bad = run_cli(["models", "promote", "m:v9"], isolated, env, module="flows.cli")
    assert bad.code != 0 and "artifact m:v9 not found" in bad.stderr and "Traceback" not in bad.stderr, bad
    assert aliases.current(store, "m").version == "v2"  # type: ignore[union-attr]

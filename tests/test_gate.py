"""The evaluation gate: promote a candidate that is at least as good as the model in service.

The decision reads the eval's manifest (candidate and production measured in one job) and moves
`production` against the move it saw; a bad gate config is one error naming the file and key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blocks.errors import ConfigError
from tasks import aliases
from tasks.artifacts import ArtifactStore, ArtifactVersion
from tasks.gate import GateConfig, decide, gate_config, markdown, passes, run_gate
from tests.test_models_cli import publish

LOWER = GateConfig(metric="bits_per_byte", direction="lower", tolerance=0.05)
HIGHER = GateConfig(metric="exact_match", direction="higher", tolerance=0.0)


@pytest.mark.parametrize(
    ("gate", "candidate", "production", "verdict"),
    [
        (LOWER, 2.00, 2.00, True), (LOWER, 2.04, 2.00, True), (LOWER, 2.06, 2.00, False), (LOWER, 1.5, 2.0, True),
        (HIGHER, 0.90, 0.90, True), (HIGHER, 0.89, 0.90, False), (HIGHER, 0.95, 0.90, True),
    ],
)
def test_at_least_as_good_within_the_tolerance(gate: GateConfig, candidate: float, production: float, verdict: bool) -> None:
    assert passes(gate, candidate, production) is verdict


@pytest.fixture
def store(isolated: Path) -> ArtifactStore:
    store = ArtifactStore(str(isolated / "store"))
    publish(store, "model", 3)
    publish(store, "eval", 3, kind="eval_results")
    return store


def evaluation(store: ArtifactStore, version: str, **metrics: float) -> ArtifactVersion:
    return store.resolve(f"eval:{version}").model_copy(update={"metrics": metrics})


def test_the_first_candidate_is_promoted_then_only_a_better_one(store: ArtifactStore) -> None:
    said: list[str] = []
    v1, v2, v3 = (store.resolve(f"model:v{n}") for n in (1, 2, 3))
    first, move = run_gate(HIGHER, evaluation(store, "v1", exact_match=0.5), {"model": v1}, store, say=said.append)
    assert first.verdict == "promoted" and move is not None and aliases.current(store, "model").version == "v1"
    assert said[-1] == "model:production moved (none) -> v1"

    worse, move = run_gate(HIGHER, evaluation(store, "v2", exact_match=0.4, production_exact_match=0.5),
                           {"model": v2, "production": v1}, store, say=said.append)
    assert worse.verdict == "rejected" and move is None and aliases.current(store, "model").version == "v1"
    assert worse.reason == ("worse: exact_match 0.4 vs 0.5 in service (higher is better, tolerance 0); "
                            "model:v1 stays in service")
    table = markdown(worse)
    assert "| metric | candidate `model:v2` | in service `model:v1` |" in table
    assert "| exact_match (gate) | 0.4 | 0.5 |" in table

    better, move = run_gate(HIGHER, evaluation(store, "v3", exact_match=0.6, production_exact_match=0.5),
                            {"model": v3, "production": v1}, store)
    assert better.verdict == "promoted" and move is not None and (move.previous, move.version) == ("v1", "v3")
    same, move = run_gate(HIGHER, evaluation(store, "v3", exact_match=0.6), {"model": v3}, store)
    assert same.verdict == "in_service" and move is None


def test_a_decision_is_recorded_once(store: ArtifactStore) -> None:
    """The same verdict on the same candidate, production and eval is news only the first time."""
    from tasks.gate import record_decision

    v1, v2 = store.resolve("model:v1"), store.resolve("model:v2")
    aliases.promote(store, "model:v1")
    rejected, _ = run_gate(HIGHER, evaluation(store, "v2", exact_match=0.4, production_exact_match=0.5),
                           {"model": v2, "production": v1}, store)
    eval_v2 = store.resolve("eval:v2")
    assert record_decision(store, rejected, eval_v2, "model") is True
    assert record_decision(store, rejected, eval_v2, "model") is False
    assert record_decision(store, rejected, store.resolve("eval:v3"), "model") is True, "another eval is news"
    # The same eval under a looser gate: now a promotion, which is news too.
    promoted = rejected.model_copy(update={"verdict": "promoted"})
    assert record_decision(store, promoted, eval_v2, "model") is True
    assert sorted(p.name for p in Path(store.root, "_registry", "model", "gate").iterdir()) == [
        "v2-vs-v1-v2-promoted.json", "v2-vs-v1-v2-rejected.json", "v2-vs-v1-v3-rejected.json"]


def test_a_production_moved_since_the_eval_is_not_compared_with(store: ArtifactStore) -> None:
    v1, v2, v3 = (store.resolve(f"model:v{n}") for n in (1, 2, 3))
    aliases.promote(store, "model:v1")
    aliases.promote(store, "model:v3")  # someone promoted while the eval measured v1
    with pytest.raises(aliases.AliasMoved, match="model:production is model:v3, the eval compared with model:v1"):
        run_gate(HIGHER, evaluation(store, "v2", exact_match=0.9, production_exact_match=0.5),
                 {"model": v2, "production": v1}, store)
    assert aliases.current(store, "model").version == "v3"


def test_an_eval_without_the_gate_metric_is_an_error_not_a_promotion(store: ArtifactStore) -> None:
    v1, v2 = store.resolve("model:v1"), store.resolve("model:v2")
    with pytest.raises(ValueError, match="reports no bits_per_byte for the model in service"):
        decide(LOWER, evaluation(store, "v2", bits_per_byte=1.0), v2, v1)


@pytest.mark.parametrize(
    ("gate", "key", "message"),
    [
        ({"metric": "bpb", "direction": "lower"}, "run.gate.metric",
         "unknown gate metric 'bpb' (metrics: exact_match, bits_per_byte, word_perplexity)"),
        ({"metric": "exact_macth", "direction": "higher"}, "run.gate.metric", "did you mean 'exact_match'?"),
        ({"metric": "exact_match", "direction": "up"}, "run.gate.direction", "Input should be 'higher' or 'lower'"),
        ({"metric": "exact_match", "direction": "higher", "tolerance": -1}, "run.gate.tolerance", "greater than or equal to 0"),
        ({"metric": "exact_match", "direction": "higher", "margin": 1}, "run.gate.margin", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_gate_is_one_error_naming_the_file_and_key(gate: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        gate_config({"gate": gate}, "eval/config/tiny.yaml")
    assert error.value.file == "eval/config/tiny.yaml" and error.value.key == key and message in str(error.value)


def test_an_unknown_gate_metric_stops_the_command_before_anything_runs(isolated: Path) -> None:
    from tests.conftest import run_cli

    store = isolated / "store"
    result = run_cli(["--stages", "eval", "-d", "eval:run.gate.metric=accuracy"], isolated,
                     env={"NANO3_ARTIFACTS_ROOT": str(store)})
    assert result.code != 0 and "run.gate.metric: unknown gate metric 'accuracy'" in result.stderr, result.stderr
    assert not store.exists() or not (store / "_registry").exists()


def test_a_gate_on_a_stage_that_does_not_measure_production_is_refused() -> None:
    from tasks.stages import STAGES_BY_ID

    gate = {"gate": {"metric": "exact_match", "direction": "higher"}}
    megatron_eval = STAGES_BY_ID["eval"].for_backend("megatron")
    with pytest.raises(ConfigError) as error:
        gate_config(gate, "eval/config/megatron_tiny.yaml", megatron_eval.consumes)
    assert error.value.key == "run.gate" and "does not measure the model in service" in str(error.value)
    assert gate_config(gate, "eval/config/tiny.yaml", STAGES_BY_ID["eval"].consumes) is not None

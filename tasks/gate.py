"""The evaluation gate: after eval, the candidate becomes the model in service only if it is at
least as good as the one there, measured on the same data in the same eval job.

The eval config's `run.gate` names the metric (one the eval reports), its direction and a
tolerance (how much worse than production, in the metric's units, still passes). The eval job
evaluated the candidate (`run.model`) and the model in service (`run.production`, the registry's
`production` alias) side by side, so the gate only reads its manifest. Outcomes:

- no model in service yet: the candidate is promoted (the first model);
- the candidate is the model in service (same digest): nothing to do, the run says so;
- better, or worse by no more than the tolerance: promoted, atomically against the alias as the
  eval saw it (tasks.aliases), mirrored to W&B, event `nano3.model.promoted`;
- worse: production stays, event `nano3.model.rejected`.

Every decision is a Prefect artifact `nano3-gate`: both models' metrics side by side. A decision
is recorded in the registry (`_registry/<model>/gate/`) the first time it is made; a later run
that makes the same one (same candidate, model in service and eval) says it again in its log and
artifact but sends no second event, so a weekly run with nothing new notifies nobody twice.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from blocks.errors import ConfigError, did_you_mean
from tasks import aliases
from tasks.artifacts import ArtifactStore, ArtifactVersion

#: What evaluate.py reports for each model it evaluates (its HEADLINE), so what a gate can compare.
GATE_METRICS = ("exact_match", "bits_per_byte", "word_perplexity")
PROMOTED_EVENT = "nano3.model.promoted"
REJECTED_EVENT = "nano3.model.rejected"
ARTIFACT_KEY = "nano3-gate"


class GateConfig(BaseModel, extra="forbid"):
    metric: str
    direction: Literal["higher", "lower"]
    tolerance: float = Field(0.0, ge=0)


class GateDecision(BaseModel):
    verdict: Literal["promoted", "rejected", "in_service"]
    reason: str
    metric: str
    direction: str
    tolerance: float
    candidate: str
    production: str | None
    candidate_value: float | None = None
    production_value: float | None = None
    #: Every headline metric of both models: the artifact's table.
    side_by_side: dict[str, tuple[float | None, float | None]] = {}


#: The input a gated stage measures the model in service through (recipes/nano3/eval/evaluate.py).
MEASURED = "production"


def gate_config(run_block: Any, config_file: str, consumes: tuple[tuple[str, str], ...] | None = None) -> GateConfig | None:
    """`run.gate` of the eval config, checked: None where it sets none. With the stage's `consumes`,
    a gate on a stage that does not measure the model in service is an error, not ignored."""
    raw = run_block.get("gate") if run_block else None
    if not raw:
        return None
    try:
        found = GateConfig.model_validate(dict(raw))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = "run.gate." + ".".join(str(part) for part in error["loc"])
        raise ConfigError(error["msg"], file=config_file, key=key) from None
    if consumes is not None and MEASURED not in dict(consumes):
        raise ConfigError(
            f"this stage does not measure the model in service (no run.{MEASURED} input), so it cannot gate",
            file=config_file, key="run.gate", hint="remove run.gate; the hf eval config gates",
        )
    if found.metric not in GATE_METRICS:
        raise ConfigError(
            f"unknown gate metric '{found.metric}'", file=config_file, key="run.gate.metric",
            hint=did_you_mean(found.metric, GATE_METRICS) or f"metrics: {', '.join(GATE_METRICS)}",
        )
    return found


def passes(gate: GateConfig, candidate: float, production: float) -> bool:
    """At least as good, within the tolerance, in the metric's direction."""
    if gate.direction == "higher":
        return candidate >= production - gate.tolerance
    return candidate <= production + gate.tolerance


def _side_by_side(metrics: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    return {
        name: (metrics.get(name), metrics.get(f"production_{name}"))
        for name in GATE_METRICS
        if name in metrics or f"production_{name}" in metrics
    }


def decide(
    gate: GateConfig, evaluation: ArtifactVersion, candidate: ArtifactVersion, production: ArtifactVersion | None
) -> GateDecision:
    """The verdict on `candidate` given the eval's manifest metrics and the model in service."""
    metrics = evaluation.metrics
    common = dict(
        metric=gate.metric, direction=gate.direction, tolerance=gate.tolerance, candidate=candidate.ref,
        production=production.ref if production else None, side_by_side=_side_by_side(metrics),
        candidate_value=metrics.get(gate.metric), production_value=metrics.get(f"production_{gate.metric}"),
    )
    if production is None:
        return GateDecision(verdict="promoted", reason="no model is in service yet: the first candidate is promoted", **common)
    if production.digest == candidate.digest:
        return GateDecision(verdict="in_service", reason=f"the candidate is the model in service ({production.ref}): nothing to promote", **common)
    value, reference = common["candidate_value"], common["production_value"]
    if value is None or reference is None:
        missing = "the candidate" if value is None else "the model in service"
        raise ValueError(f"the eval {evaluation.ref} reports no {gate.metric} for {missing}")
    better = "lower" if gate.direction == "lower" else "higher"
    comparison = f"{gate.metric} {value:g} vs {reference:g} in service ({better} is better, tolerance {gate.tolerance:g})"
    if passes(gate, value, reference):
        return GateDecision(verdict="promoted", reason=f"at least as good: {comparison}", **common)
    return GateDecision(verdict="rejected", reason=f"worse: {comparison}; {production.ref} stays in service", **common)


def markdown(decision: GateDecision) -> str:
    """The gate artifact: verdict, then both models' metrics side by side."""
    title = {"promoted": "promoted", "rejected": "rejected", "in_service": "already in service"}[decision.verdict]
    lines = [
        f"## Evaluation gate: {title}",
        "",
        decision.reason,
        "",
        f"| metric | candidate `{decision.candidate}` | in service `{decision.production or '(none)'}` |",
        "|---|---|---|",
    ]
    for name, (candidate, production) in decision.side_by_side.items():
        mark = " (gate)" if name == decision.metric else ""
        lines.append(f"| {name}{mark} | {_cell(candidate)} | {_cell(production)} |")
    lines += ["", f"gate: {decision.metric}, {decision.direction} is better, tolerance {decision.tolerance:g}"]
    return "\n".join(lines) + "\n"


def record_decision(store: ArtifactStore, decision: GateDecision, evaluation: ArtifactVersion, model: str) -> bool:
    """Keep the decision in the registry; False where this same decision was recorded before.

    The verdict is part of its name: a looser tolerance that turns a rejection into a promotion is
    news, and its event and W&B alias are not skipped as a repeat."""
    candidate = decision.candidate.rpartition(":")[2]
    production = decision.production.rpartition(":")[2] if decision.production else "none"
    name = f"{candidate}-vs-{production}-{evaluation.version}-{decision.verdict}.json"
    path = store._path("_registry", model, "gate", name)
    return store._create_exclusive(path, decision.model_dump_json(indent=2))


def emit_decision(decision: GateDecision, model: str) -> None:
    """`nano3.model.promoted` or `nano3.model.rejected`, its payload the decision; nothing while the
    candidate is already in service (no news)."""
    from prefect.events import emit_event

    if decision.verdict == "in_service":
        return
    emit_event(
        event=PROMOTED_EVENT if decision.verdict == "promoted" else REJECTED_EVENT,
        resource={"prefect.resource.id": f"nano3.model.{model}", "prefect.resource.name": model},
        payload=decision.model_dump(mode="json"),
    )


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def run_gate(
    gate: GateConfig,
    evaluation: ArtifactVersion,
    inputs: dict[str, ArtifactVersion],
    store: ArtifactStore,
    say: Any = print,
) -> tuple[GateDecision, aliases.AliasMove | None]:
    """Decide and act: promote through the alias as the eval saw it, or leave it.

    The eval's `production` input is what the candidate was measured against; a production that
    moved since (another run promoted, someone rolled back) is not compared with: AliasMoved."""
    candidate = inputs["model"]
    history = aliases.moves(store, candidate.name)
    current = store.version(candidate.name, history[-1].version) if history else None
    measured = inputs.get("production")
    if current is not None and current.digest != candidate.digest and (measured is None or measured.digest != current.digest):
        raise aliases.AliasMoved(
            f"{candidate.name}:{aliases.PRODUCTION} is {current.ref}, the eval compared with "
            f"{measured.ref if measured else 'nothing'}; run the pipeline again to compare with it"
        )
    decision = decide(gate, evaluation, candidate, current)
    say(f"gate: {decision.verdict}: {decision.reason}")
    move = None
    if decision.verdict == "promoted":
        move = aliases.promote(
            store, candidate.ref, reason=f"gate: {decision.reason} (eval {evaluation.ref})",
            seen=history[-1].number if history else 0,
        )
        say(f"{candidate.name}:{aliases.PRODUCTION} moved {move.previous or '(none)'} -> {move.version}")
    return decision, move

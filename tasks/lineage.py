"""Lineage of published artifacts: Prefect artifacts, Prefect assets, and a W&B mirror.

Prefect shows each stage's inputs → output (with versions and digests) and metrics on the run's
page, and its asset graph links the outputs; W&B gets the same artifacts with aliases. Offline,
W&B cannot record `use_artifact` edges, so the inputs go into the artifact's metadata instead.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocks.settings import WandbConfig
from tasks.artifacts import ArtifactVersion
from tasks.stages import Stage

if TYPE_CHECKING:
    from prefect.assets import Asset


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def asset_key(uri: str) -> str:
    """Prefect asset keys are URIs; a local path becomes file://."""
    return uri if "://" in uri else Path(uri).resolve().as_uri()


def stage_asset(url: str, name: str, kind: str) -> Asset:
    """One artifact as a Prefect asset; producer and consumers build it alike so the graph joins up."""
    from prefect.assets import Asset, AssetProperties

    return Asset(key=asset_key(url), properties=AssetProperties(name=name, description=f"nano3 {kind} artifact"))


def output_asset(stage: Stage, output_url: str) -> Asset:
    return stage_asset(output_url, stage.artifact, stage.produces)


def input_assets(inputs: dict[str, ArtifactVersion]) -> list[Asset]:
    return [stage_asset(ref.uri, ref.name, ref.type) for ref in inputs.values()]


def describe_asset_materialization(output: ArtifactVersion) -> None:
    """Version, digest and metrics on the asset's materialization event (inside a materializing task)."""
    from prefect.assets import add_asset_metadata
    from prefect.context import AssetContext

    context = AssetContext.get()
    key = asset_key(output.uri)
    if context is None or key not in {a.key for a in context.downstream_assets}:
        return
    add_asset_metadata(
        key,
        {"artifact": output.ref, "type": output.type, "digest": output.digest, "cache_key": output.cache_key,
         "metrics": output.metrics},
    )


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def publish_stage_artifacts(stage_id: str, output: ArtifactVersion, inputs: dict[str, ArtifactVersion], status: str) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = "\n".join(
        f"| {name} | `{ref.ref}` | {ref.type} | `{_short(ref.digest)}` | `{ref.uri}` |" for name, ref in inputs.items()
    ) or "| – | (none) | | | |"
    create_markdown_artifact(
        key=artifact_key(stage_id, "lineage"),
        description=f"{stage_id}: inputs → output",
        markdown=(
            f"## {stage_id} ({status})\n\n"
            f"**Output** `{output.ref}` ({output.type}), digest `{_short(output.digest)}`, at `{output.uri}`\n\n"
            "| input | artifact | type | digest | location |\n|---|---|---|---|---|\n"
            f"{rows}\n"
        ),
    )
    if output.metrics:
        create_table_artifact(
            key=artifact_key(stage_id, "metrics"),
            description=f"{stage_id}: metrics of {output.ref}",
            table=[{"metric": k, "value": v} for k, v in sorted(output.metrics.items())],
        )


def chart_url(output: ArtifactVersion, chart: str) -> str:
    """Where one of the artifact's charts lies, as a link (file:// for a local store)."""
    return asset_key(f"{output.uri.rstrip('/')}/{chart}")


def report_markdown(stage_id: str, output: ArtifactVersion) -> str:
    """The report's table, then its charts (linked: a markdown artifact cannot hold the image)."""
    report = output.report
    assert report is not None
    cells = lambda row: " | ".join(_cell(row.get(column)) for column in report.columns)  # noqa: E731
    lines = [f"## {stage_id}: {report.title}", "", f"Artifact `{output.ref}`", "",
             "| " + " | ".join(report.columns) + " |", "|" + "---|" * len(report.columns),
             *(f"| {cells(row)} |" for row in report.rows), ""]
    lines += [f"![{chart}]({chart_url(output, chart)}) [{chart}]({chart_url(output, chart)})" for chart in report.charts]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def publish_report(stage_id: str, output: ArtifactVersion) -> None:
    """A stage's report as a Prefect table artifact, and as markdown with links to its charts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if output.report is None:
        return
    create_table_artifact(
        key=artifact_key(stage_id, "report"),
        description=f"{stage_id}: {output.report.title} ({output.ref})",
        table=[{column: row.get(column) for column in output.report.columns} for row in output.report.rows],
    )
    create_markdown_artifact(
        key=artifact_key(stage_id, "charts"),
        description=f"{stage_id}: {output.report.title}, with its charts",
        markdown=report_markdown(stage_id, output),
    )


def mermaid_lineage(results: list[tuple[str, ArtifactVersion, dict[str, ArtifactVersion]]]) -> str:
    """The whole run as a Mermaid graph: artifact versions as nodes, stages as edges."""
    lines = ["graph LR"]
    node = lambda ref: artifact_key(ref.name, ref.version)  # noqa: E731
    for stage_id, output, inputs in results:
        lines.append(f'  {node(output)}["{output.ref}<br/>{output.type}"]')
        for ref in inputs.values():
            lines.append(f"  {node(ref)} -->|{stage_id}| {node(output)}")
    return "\n".join(lines)


def publish_run_lineage(results: list[tuple[str, ArtifactVersion, dict[str, ArtifactVersion]]]) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key="nano3-lineage",
        description="Lineage of this nano3 run",
        markdown="## nano3 lineage\n\n```mermaid\n" + mermaid_lineage(results) + "\n```\n",
    )


def _wandb_report(wandb: Any, stage_id: str, output: ArtifactVersion) -> dict[str, Any]:
    """The report as a W&B table, and its charts as W&B images where the store is local."""
    report = output.report
    assert report is not None
    logged: dict[str, Any] = {
        f"{stage_id}/report": wandb.Table(
            columns=report.columns, data=[[row.get(column) for column in report.columns] for row in report.rows]
        )
    }
    if "://" not in output.uri:
        for chart in report.charts:
            logged[f"{stage_id}/{chart.removesuffix('.png')}"] = wandb.Image(str(Path(output.uri) / chart))
    return logged


def wandb_mode(settings: WandbConfig | None) -> str:
    return (settings.mode if settings else None) or os.environ.get("WANDB_MODE") or "offline"


_wandb_import: threading.Thread | None = None


def import_wandb_in_background(settings: WandbConfig | None) -> None:
    """Start importing W&B while a stage's job runs, for the mirror that follows it.

    A process's first W&B run imports W&B's public API on start (its pydantic models: 3.3 s of
    the first stage here); the import lock makes the mirror wait for this import if it is not done.
    """
    global _wandb_import
    if _wandb_import is not None or wandb_mode(settings) == "disabled":
        return

    def load() -> None:
        import wandb  # noqa: F401
        from wandb.sdk.launch.inputs import internal  # noqa: F401

    _wandb_import = threading.Thread(target=load, name="import-wandb", daemon=True)
    _wandb_import.start()


#: A mirror run records an artifact and the stage's metrics; what W&B collects about the process
#: that logs them (the installed packages, code, git state, system metrics) describes the
#: orchestrator, not the training, and listing the packages alone took 0.27 s per stage.
MIRROR_RUN_SETTINGS = dict(
    x_save_requirements=False, save_code=False, disable_code=True, disable_git=True, x_disable_stats=True, x_disable_meta=True
)


def mirror_to_wandb(
    settings: WandbConfig | None,
    stage_id: str,
    output: ArtifactVersion,
    inputs: dict[str, ArtifactVersion],
    wandb_dir: Path,
    aliases: tuple[str, ...] = (),
) -> Path | None:
    """Log the output as a W&B artifact (by reference: nothing is copied). Returns the run folder,
    None when W&B is disabled or this version was mirrored before (a rerun of a cached stage).

    `aliases`: more W&B aliases for the version (a promotion logs the same reference again with
    `production`: W&B gives the version of that content the alias)."""
    mode = wandb_mode(settings)
    settings = settings or WandbConfig()
    if mode == "disabled":
        return None
    # Written once the run is finished: a crash before that mirrors the version again next time.
    marker = "-".join((output.name, output.version, output.digest.removeprefix("sha256:")[:16], *aliases, mode))
    done = wandb_dir / "mirrored" / marker
    if done.is_file():
        return None
    with _ONE_MIRROR_AT_A_TIME:  # stages finishing at once: one W&B run of this process at a time
        return _mirror(settings, stage_id, output, inputs, wandb_dir, aliases, mode, done)


#: W&B's runs of one process share its service connection and settings; mirroring takes a second.
_ONE_MIRROR_AT_A_TIME = threading.Lock()


def _mirror(
    settings: WandbConfig, stage_id: str, output: ArtifactVersion, inputs: dict[str, ArtifactVersion],
    wandb_dir: Path, aliases: tuple[str, ...], mode: str, done: Path,
) -> Path | None:
    import wandb

    wandb_dir.mkdir(parents=True, exist_ok=True)
    env: dict[str, Any] = {}
    if settings.api_key is not None:
        env["api_key"] = settings.api_key.get_secret_value()
    run = wandb.init(
        project=settings.project or "nano3",
        entity=settings.entity,
        group=settings.group,
        job_type=stage_id.replace("/", "-"),
        name="-".join((stage_id.replace("/", "-"), output.version, *aliases)),
        dir=str(wandb_dir),
        mode=mode,
        tags=list(settings.tags),
        reinit="create_new",
        settings=wandb.Settings(silent=True, **MIRROR_RUN_SETTINGS, **({"api_key": env["api_key"]} if env else {})),
    )
    try:
        artifact = wandb.Artifact(
            name=output.name,
            type=output.type,
            metadata={
                "digest": output.digest,
                "version": output.version,
                "cache_key": output.cache_key,
                "metrics": output.metrics,
                "inputs": [{"ref": r.ref, "digest": r.digest, "type": r.type} for r in inputs.values()],
            },
        )
        try:
            artifact.add_reference(asset_key(output.uri), checksum=False)
        except wandb.Error:
            # W&B resolves an s3:// (gs://, az://) reference with that cloud's own SDK, boto3 for
            # S3, which nothing else here needs (s3fs speaks to S3 through aiobotocore) and which
            # is not installed: the mirror then holds the location as a file instead of failing
            # a stage whose output is already published.
            with artifact.new_file("reference.json") as handle:
                json.dump({"uri": output.uri, "digest": output.digest}, handle)
        if mode == "online":
            for ref in inputs.values():
                run.use_artifact(f"{ref.name}:{ref.version}")
        run.log({f"{stage_id}/{k}": v for k, v in output.metrics.items() if isinstance(v, (int, float))})
        if output.report is not None:
            run.log(_wandb_report(wandb, stage_id, output))
        run.log_artifact(artifact, aliases=[output.version, *(aliases or ("latest",))])
        folder = Path(run.dir).parent
    finally:
        run.finish()
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(f"{folder}\n")
    return folder

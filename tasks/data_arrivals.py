"""New data: the sources whose shards differ from what their stage's latest artifact was made from,
and the Prefect event `nano3.data.arrived` that starts a retraining (deployments/prefect.yaml).

The comparison needs no state of its own: a data prep records the fingerprint of the snapshot it
read in its manifest (`source_fingerprint`). An announced fingerprint is remembered in the store
(`_sources/<stage>.<section>.announced`), so a watcher that runs every few minutes says it once,
not until the triggered run has published.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel

from tasks import data_sources
from tasks.artifacts import ArtifactStore
from tasks.job_config import JobConfig

DATA_ARRIVED = "nano3.data.arrived"


class SourceState(BaseModel):
    stage: str
    section: str
    url: str
    #: The source's fingerprint now; None while it is empty (the first run fills it).
    fingerprint: str | None
    shards: int
    #: What the stage's latest artifact was made from; None before its first run.
    made_from: str | None
    announced: str | None

    @property
    def resource_id(self) -> str:
        return f"nano3.source.{self.stage.replace('/', '-')}.{self.section}"

    @property
    def is_new(self) -> bool:
        return self.fingerprint is not None and self.fingerprint != self.made_from

    @property
    def condition(self) -> str:
        """In words, as `nemotron data status` and the watcher say it."""
        if self.fingerprint is None:
            return "empty: the first run fills it"
        if not self.is_new:
            return f"up to date ({self.shards} shards, as last made)"
        return "new data, announced" if self.announced == self.fingerprint else "new data"


def _announced_path(store: ArtifactStore, stage: str, section: str) -> str:
    return store._path("_sources", f"{stage.replace('/', '-')}.{section}.announced")


def states(jobs: Sequence[JobConfig], store: ArtifactStore) -> list[SourceState]:
    """Every `files` source of the jobs, with what it holds now and what was last made from it."""
    found = []
    for job in jobs:
        for source in data_sources.data_sources(job, store):
            snapshot = data_sources.check(source, store)
            latest = store.latest(job.stage.artifact)
            manifest = store.read_manifest(latest.uri) if latest else None
            announced = _announced_path(store, job.stage.id, source.section)
            found.append(SourceState(
                stage=job.stage.id, section=source.section, url=source.url,
                fingerprint=snapshot.digest if snapshot else None, shards=len(snapshot.files) if snapshot else 0,
                made_from=(manifest.metadata.get("source_fingerprint") if manifest else None),
                announced=store.fs.cat_file(announced).decode().strip() if store.fs.exists(announced) else None,
            ))
    return found


def announce(state: SourceState, store: ArtifactStore, say: Callable[[str], None] = print) -> bool:
    """Emit `nano3.data.arrived` for a source with new data, once per fingerprint; True if sent.
    Says why where it sends nothing."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    from prefect.settings import get_current_settings

    where = f"{state.stage} {state.section}"
    if state.condition != "new data":
        say(f"{where}: {state.condition}")
        return False
    # Without a server of its own, Prefect would start a temporary one that nobody listens to.
    server = get_current_settings().api.url
    event = None if not server else emit_event(
        event=DATA_ARRIVED,
        resource={"prefect.resource.id": state.resource_id, "prefect.resource.name": f"{state.stage} {state.section}"},
        payload=state.model_dump(mode="json"),
    )
    if event is None:
        say(f"{where}: new data, but no Prefect server to tell (PREFECT_API_URL is not set); the next run reads it")
        return False
    EventsWorker.drain_all()
    store._write_atomic(_announced_path(store, state.stage, state.section), f"{state.fingerprint}\n")
    say(f"{where}: new data in {state.url} ({state.shards} shards, fingerprint "
        f"{state.fingerprint.removeprefix('sha256:')[:12]}): event {DATA_ARRIVED} sent")
    return True

"""The data watcher: a small scheduled flow that tells Prefect when a data source has new shards.

Deployed beside the retraining (deployments/prefect.yaml, every 10 minutes), it compares each
source's fingerprint with the one its stage's latest artifact was made from and emits
`nano3.data.arrived` once per new fingerprint (tasks.data_arrivals); the retraining deployment's
trigger on that event starts a run, in which only the stages the new data reaches run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.run_options import RunOptions, resolve_run
from tasks.artifacts import open_store
from tasks.data_arrivals import announce, states
from tasks.stages import STAGES


@flow(name="nano3-data-watch", log_prints=False)
def watch_data(config: str = "tiny", overrides: list[str] | None = None) -> list[str]:
    """Emit `nano3.data.arrived` for every source whose shards changed since its stage last ran."""
    logger = get_run_logger()
    options = RunOptions(config=config, overrides=tuple(overrides or ()))
    resolved = resolve_run(options, [stage for stage in STAGES if stage.sources])
    store = open_store(resolved.context.artifacts)
    announced = []
    for state in states(resolved.jobs, store):
        if announce(state, store, say=logger.info):
            announced.append(state.resource_id)
    return announced

"""Crash campaign: SIGKILL the orchestrator at seeded random points of a pipeline run, rerun.

The campaign itself (what a cycle does and what it counts) is tests/reliability/campaign.py;
bench/crash_campaign.py runs it over several seeds. Here: one seed (NANO3_KILL_SEED, default
1337), NANO3_KILLS kills (default 10; the 100-kill statistics are bench/crash_campaign.py's), every count at its goal.

docs/reliability.md has the last measured report and how to rerun it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.campaign import report, run_campaign

KILL_SEED = int(os.environ.get("NANO3_KILL_SEED", "1337"))
KILLS = int(os.environ.get("NANO3_KILLS", "10"))


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_crash_campaign(prefect_api: str, isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    campaign = run_campaign(isolated, prefect_api, kills=KILLS, seed=KILL_SEED)
    cycles = campaign.cycles
    text = report(campaign)
    with capsys.disabled():
        print("\n" + text)
    (isolated / "crash-campaign.txt").write_text(text)
    assert sum(c.finished for c in cycles) == len(cycles), text
    assert [p for c in cycles for p in c.duplicates] == [], text
    assert [p for c in cycles for p in c.bad_digests] == [], text
    assert [p for c in cycles for p in c.redone] == [], text
    assert sum(c.killed for c in cycles) >= len(cycles) // 2, "most kill points fell inside a run"
    assert any(c.in_flight for c in cycles), "some kills interrupted a running job"

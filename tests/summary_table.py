"""Reading back the summary table `python -m flows.nano3` prints (flows/summary.py)."""

from __future__ import annotations

from tasks.stages import STAGES


def statuses(output: str) -> dict[str, str]:
    """stage → status (ran, cached, reattached), from the summary table's rows: the first row of
    each stage (the eval's ladder table, printed after it, has rows named after stages too)."""
    ids = {s.id for s in STAGES}
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) >= 2 and cells[0] in ids and cells[0] not in found:
            found[cells[0]] = cells[1]
    return found

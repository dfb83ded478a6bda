"""Artifact references as configs write them: `name`, `name:latest`, `name:v3`, `name:<alias>`.

One reading for every module that asks what a reference names, and in particular whether it
follows the run: a reference to an artifact's latest version (`name` or `name:latest`) takes, inside
a run, the version the run's own stage makes, and that stage goes first; a pinned version or an
alias (`production`) is read from the store whatever the run makes.
"""

from __future__ import annotations

import re

#: `name`, `name:latest`, `name:v3`, or `name:<alias>` (tasks.aliases: `production`); `art://` optional.
REF_PATTERN = re.compile(r"^(?:art://)?(?P<name>[A-Za-z0-9_.-]+)(?::(?P<version>latest|v\d+|[a-z][a-z0-9_-]{0,40}))?$")


def ref_name(ref: str) -> str:
    """The artifact a reference names, whichever version."""
    return ref.strip().removeprefix("art://").split(":")[0]


def follows_run(ref: str) -> bool:
    """Whether `ref` names its artifact's latest version: the one a stage of the same run makes."""
    match = REF_PATTERN.match(ref.strip())
    return match is not None and (match["version"] or "latest") == "latest"

"""What the block lookup (blocks/profile_lookup.py) and the blocks (blocks/profile_blocks.py)
share, without Prefect: block names, the reserved sections' check, Prefect's API errors."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from blocks.env_toml import EnvFile
from blocks.errors import ConfigError
from blocks.settings import parse_section

#: Block names for the reserved sections (one of each per Prefect server).
WANDB_BLOCK = "default"
ARTIFACTS_BLOCK = "default"


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """Prefect's API for this command (blocks.prefect_server: the local server when none is
    configured); its "cannot reach / cannot start the API" RuntimeError as one readable error."""
    from blocks.prefect_server import use_local_server

    try:
        use_local_server()
        yield
    except RuntimeError as exc:
        raise ConfigError(f"cannot reach the Prefect API: {exc}", hint="check PREFECT_API_URL, or retry") from None


def block_name(profile_name: str) -> str:
    """Prefect block names are lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9-]+", "-", profile_name.lower()).strip("-")
    if not slug:
        raise ConfigError(f"profile name {profile_name!r} has no letters or digits to name a block with")
    return slug


def check_reserved_sections(env: EnvFile) -> None:
    """[wandb], [artifacts], [cache], [cli] are validated up front, like the profiles."""
    for name in env.reserved:
        parse_section(name, env.section(name), file=str(env.path))

"""Keeping out of a process what it does not need: planning, submitting or following a job runs
no model and guesses no text encoding (the job itself imports what it needs in its own process)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

#: Optional imports of NeMo-Run's import chain that planning and submitting never use. Each is imported inside
#: `try/except ImportError` by the library that wants it, so blocking it changes nothing a plan
#: contains (the pipeline's Slurm plan is byte for byte the same; tests/test_secrets_and_cli.py
#: plans every executor this way):
#: - torch: nemo_run/core/serialization/yaml.py registers a YAML representer for torch.dtype.
#: - chardet: requests guesses response encodings with it, else with charset_normalizer (which
#:   `runs status` of a DGX Cloud or Lepton job then uses; planning makes no request at all).
#: Their share of a dry-run is in docs/performance.md (`python -X importtime`).
NOT_NEEDED_FOR_PLANNING = ("torch", "chardet")


@contextlib.contextmanager
def without(modules: tuple[str, ...] = NOT_NEEDED_FOR_PLANNING) -> Iterator[None]:
    """While inside, `import <module>` fails fast with ImportError. A module this process already
    imported stays as it is, and every module can be imported again after the block."""
    blocked = [name for name in modules if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]

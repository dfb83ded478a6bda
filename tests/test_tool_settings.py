"""The tool's own environment variables: one pydantic-settings model reads them, the docs list them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blocks.env_toml import find_env_file
from blocks.tool_settings import TOOL_VARIABLES, tool_settings
from tasks.artifacts import open_store
from tests.conftest import PROJECT

#: Where the orchestrator's code lives; the recipes read their own two variables (runtime.py).
ORCHESTRATOR = ("blocks", "tasks", "flows", "deployments")


def test_the_model_reads_each_variable(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = isolated / "elsewhere.toml"
    other.write_text("[local]\nexecutor = 'local'\n")
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(other))
    monkeypatch.setenv("NANO3_ARTIFACTS_ROOT", str(isolated / "store"))
    monkeypatch.setenv("NANO3_SCRATCH", "")  # empty means unset, as a shell's `VAR=` does
    settings = tool_settings()
    assert settings.env_file == other and settings.artifacts_root == str(isolated / "store")
    assert settings.scratch is None
    # The modules that use them go through the model.
    assert find_env_file() == other
    assert open_store(None).root == str(isolated / "store")


def test_no_orchestrator_module_reads_a_tool_variable_itself() -> None:
    pattern = re.compile(r"environ(?:\.get)?\(?\[?\s*[\"'](?:NEMOTRON|NANO3)_|getenv\(\s*[\"'](?:NEMOTRON|NANO3)_")
    offenders = [
        str(path.relative_to(PROJECT))
        for folder in ORCHESTRATOR
        for path in (PROJECT / folder).rglob("*.py")
        if path.name != "tool_settings.py" and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_the_architecture_page_lists_every_variable() -> None:
    page = (PROJECT / "docs" / "architecture.md").read_text()
    assert len(TOOL_VARIABLES) >= 5
    missing = [name for name in TOOL_VARIABLES if f"`{name}`" not in page]
    assert missing == []

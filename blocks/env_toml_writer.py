"""Writing an env.toml from a template: render, refuse literal secrets, validate with the loader.

The template is a YAML file (`output_path`, `force`, `preamble`, `sections`) whose sections are
the profiles to write, in order. The result is checked by `load_env_file` and `parse_profile`,
the code every command reads env.toml with, so a file this writes is a file the tool accepts.
`${oc.env:VAR}` placeholders are written as they are: values are read from the environment when
a profile is used, never copied into the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks.env_toml import EnvFile, load_env_file
from blocks.errors import ConfigError, did_you_mean

#: What a template may set at the top level; everything else is a typo.
TEMPLATE_KEYS = ("output_path", "force", "preamble", "sections")
#: `${oc.env:VAR}` without a default: validation needs a stand-in when VAR is unset here.
REQUIRED_ENV = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)\}")
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class RenderedEnvFile:
    path: Path
    text: str
    #: (profile, executor) for every profile a command can run with.
    profiles: list[tuple[str, str]]
    written: bool
    #: The file exists and force is off: a dry-run shows the text, a run refuses.
    would_refuse: bool = False


# --- TOML -----------------------------------------------------------------------------------


def _key(key: str) -> str:
    return key if BARE_KEY.match(key) else _string(key)


def _string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    for char, code in (("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r")):
        escaped = escaped.replace(char, code)
    return f'"{escaped}"'


def toml_value(value: Any, where: str) -> str:
    """One TOML value; nested tables become inline tables so a profile stays one section."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{value} cannot be written to TOML", key=where)
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, Mapping):
        items = [f"{_key(str(k))} = {toml_value(v, f'{where}.{k}')}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise ConfigError(f"a {type(value).__name__} cannot be written to TOML", key=where)


def render_env_toml(sections: Mapping[str, Mapping[str, Any]], preamble: str = "") -> str:
    """`[section]` per entry, keys in template order; None values are left out (TOML has no null)."""
    lines = [preamble.rstrip("\n"), ""] if preamble.strip() else []
    for name, section in sections.items():
        lines.append(f"[{_key(name)}]")
        for key, value in section.items():
            if value is not None:
                lines.append(f"{_key(str(key))} = {toml_value(value, f'{name}.{key}')}")
        lines.append("")
    return "\n".join(lines)


# --- secrets --------------------------------------------------------------------------------


def _secret_field_names() -> set[str]:
    """Fields typed SecretStr in any profile or reserved section, with their aliases."""
    from pydantic import AliasChoices, SecretStr

    from blocks.profiles import PROFILE_TYPES
    from blocks.settings import SECTION_TYPES

    names: set[str] = set()
    for cls in (*PROFILE_TYPES.values(), *SECTION_TYPES.values()):
        for name, info in cls.model_fields.items():
            if SecretStr in getattr(info.annotation, "__args__", (info.annotation,)):
                names.add(name)
                if isinstance(info.validation_alias, AliasChoices):
                    names.update(c for c in info.validation_alias.choices if isinstance(c, str))
    return names


def _is_placeholder(value: Any) -> bool:
    return not isinstance(value, str) or value == "" or "${" in value


def literal_secrets(sections: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(section, key) of every secret given as a value instead of a `${oc.env:...}` placeholder."""
    from blocks.profiles import SECRET_ENV_NAME

    secret_fields = _secret_field_names()
    found = []
    for name, section in sections.items():
        for key, value in section.items():
            if key in secret_fields and not _is_placeholder(value):
                found.append((name, key))
            if key in ("env_vars", "secret_env_vars") and isinstance(value, Mapping):
                for var, var_value in value.items():
                    if SECRET_ENV_NAME.search(str(var)) and not _is_placeholder(var_value):
                        found.append((name, f"{key}.{var}"))
    return found


# --- validation -----------------------------------------------------------------------------


@contextlib.contextmanager
def _stand_ins_for_unset_variables(text: str) -> Iterator[None]:
    """Placeholders that need a variable unset on this machine get a stand-in while validating:
    the file is checked for shape, not for this shell's environment."""
    missing = sorted({name for name in REQUIRED_ENV.findall(text) if name not in os.environ})
    os.environ.update({name: f"<{name}>" for name in missing})
    try:
        yield
    finally:
        for name in missing:
            os.environ.pop(name, None)


def validate_env_file(env: EnvFile) -> list[tuple[str, str]]:
    """What `profiles list` and every run check: reserved sections and each runnable profile."""
    from blocks.profile_lookup import check_reserved_sections
    from blocks.profiles import parse_profile

    check_reserved_sections(env)
    return [
        (name, parse_profile(env.profile(name), file=str(env.path), section=name).executor)
        for name in env.runnable_profiles()
    ]


def _validate_text(text: str, folder: Path, shown_as: Path) -> list[tuple[str, str]]:
    """Load `text` with the loader from a scratch file; errors name `shown_as`, the real target."""
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / f".{shown_as.name}.{uuid.uuid4().hex}.tmp"
    scratch.write_text(text)
    try:
        with _stand_ins_for_unset_variables(text):
            return validate_env_file(load_env_file(scratch))
    except ConfigError as exc:
        if exc.file == str(scratch):
            exc.file = str(shown_as)
        raise
    finally:
        scratch.unlink(missing_ok=True)


# --- the template ---------------------------------------------------------------------------


def load_template(path: Path, overrides: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The template YAML with `key=value` overrides applied; `${...}` stays unresolved."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors: report the file and the first line of the reason
        raise ConfigError(f"malformed YAML: {str(exc).splitlines()[0]}", file=str(path)) from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError("expected a mapping at the top level", file=str(path))
    for key, _ in overrides:
        top = key.split(".")[0]
        if top not in TEMPLATE_KEYS or (top != "sections" and "." in key):
            raise ConfigError(
                f"override of '{key}', which the template does not define",
                file="command line",
                key=key,
                hint=did_you_mean(top, TEMPLATE_KEYS) or f"keys: {', '.join(TEMPLATE_KEYS)}, sections.<profile>.<key>",
            )
    try:
        merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides]))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override: {str(exc).splitlines()[0]}", file="command line") from None
    data = OmegaConf.to_container(merged, resolve=False)
    assert isinstance(data, dict)
    sections = data.get("sections")
    if not isinstance(sections, dict) or not sections or not all(isinstance(s, dict) for s in sections.values()):
        raise ConfigError("`sections` must map each profile name to its settings", file=str(path), key="sections")
    if not isinstance(data.get("force", False), bool):
        raise ConfigError(f"force must be true or false (got {data.get('force')!r})", file="command line", key="force")
    return data


def write_env_toml(template: Path, overrides: Sequence[tuple[str, str]], *, dry_run: bool = False) -> RenderedEnvFile:
    """Render the template, check it, and write it to its output_path (atomically)."""
    data = load_template(template, overrides)
    output = Path(str(data.get("output_path") or "env.toml")).expanduser()
    output = output if output.is_absolute() else Path.cwd() / output
    refuse = output.exists() and not data.get("force", False)
    if refuse and not dry_run:
        raise ConfigError("exists; not overwritten", file=str(output), hint="pass force=true to replace it")
    sections: dict[str, dict[str, Any]] = data["sections"]
    leaks = literal_secrets(sections)
    if leaks:
        section, key = leaks[0]
        variable = key.rpartition(".")[2].upper()
        raise ConfigError(
            "a secret must stay an ${oc.env:VAR} placeholder, not a value",
            file=str(output),
            section=section,
            key=key,
            hint=f"export {variable}=... and keep the placeholder ${{oc.env:{variable}}}",
        )
    text = render_env_toml(sections, str(data.get("preamble") or ""))
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="nano3-env-") as scratch:
            profiles = _validate_text(text, Path(scratch), output)
        return RenderedEnvFile(output, text, profiles, written=False, would_refuse=refuse)
    profiles = _validate_text(text, output.parent, output)
    staged = output.parent / f".{output.name}.{uuid.uuid4().hex}.new"
    staged.write_text(text)
    os.replace(staged, output)
    return RenderedEnvFile(output, text, profiles, written=True)

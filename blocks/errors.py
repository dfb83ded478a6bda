"""The one error type for bad user input: it always says where (file, section, key)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(Exception):
    """Bad input from a user-edited file or the command line.

    Rendered as one line, `file: [section] key: message (hint)`, so the CLI can print it without
    a traceback and the user can jump straight to the offending place.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        section: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.section = section
        self.key = key
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}:")
        if self.section:
            where.append(f"[{self.section}]")
        if self.key:
            where.append(f"{self.key}:")
        text = " ".join(where + [self.message])
        if self.hint:
            text += f" ({self.hint})"
        return text


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate a typo most likely meant, if any is close enough."""
    matches = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    guess = closest(word, candidates)
    return f"did you mean '{guess}'?" if guess else None

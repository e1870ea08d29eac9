"""One error type for bad user input, with the fix in the message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LongtailError(Exception):
    """Bad input from the user (config, data, names). The message names the problem and the fix."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The most similar valid choice, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> LongtailError:
    """A LongtailError for an unknown ``name`` of ``kind``, suggesting the closest valid one."""
    choices = sorted(choices)
    guess = closest(name, choices)
    hint = f" Did you mean '{guess}'?" if guess else ""
    return LongtailError(f"Unknown {kind} '{name}'.{hint} Valid {kind}s: {', '.join(choices)}.")

"""One error type for bad user input, with the fix in the message."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    """A setting that an error's fix names, e.g. the data root; each command spells it as its users type it."""

    name: str  # the keyword of the function that reads it, e.g. 'root' or 'download' of create_datasets
    value: str  # what to set it to, e.g. '<folder>' or 'true'


SettingSpelling = Callable[[Setting], str]


def keyword_spelling(setting: Setting) -> str:
    """``root=<folder>``: a setting as ``key=value`` (the keyword of the function that reads it)."""
    return f"{setting.name}={setting.value}"


class LongtailError(Exception):
    """Bad input from the user (config, data, names). The message names the problem and the fix."""

    def spelled(self, spell: SettingSpelling) -> str:
        """The message with the settings it names spelled by ``spell`` (as a command's users type them)."""
        return str(self)


class SettingError(LongtailError):
    """A LongtailError whose fix names settings: its message is text and Setting parts, joined. ``str()``
    spells the settings as keywords (``root=<folder>``); a command passes its own spelling to ``spelled``."""

    def __init__(self, *parts: str | Setting) -> None:
        self.parts = parts
        super().__init__(self.spelled(keyword_spelling))

    def spelled(self, spell: SettingSpelling) -> str:
        return "".join(part if isinstance(part, str) else spell(part) for part in self.parts)


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

"""Argument types shared by the sub-commands: argparse reports a bad value with the option's name."""

from __future__ import annotations

import argparse

from longtail.errors import LongtailError

# Settings that say where a trained run's data is, not what was trained: commands that rebuild a run's
# dataset (eval, predict --features, cluster --run-dir) accept them as key=value overrides.
DATA_LOCATION_KEYS = ("data.root", "data.args.download", "data.args.image_root", "data.args.list_root")


def positive_int(text: str) -> int:
    """An integer >= 1 (a count: classes to show, clusters, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def checked_overrides(command: str, overrides: list[str], allowed: tuple[str, ...]) -> list[str]:
    """``overrides`` when each key starts with one of ``allowed``; else one message naming the key."""
    for item in overrides:
        key = item.partition("=")[0]
        if not key.startswith(allowed):
            raise LongtailError(
                f"`longtail {command}` cannot change '{key}': the model was trained with it. "
                f"Settings it accepts: {', '.join(allowed)}."
            )
    return overrides

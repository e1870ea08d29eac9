"""``longtail recipes``: the training recipes shipped with the package."""

from __future__ import annotations

import argparse

from longtail.config import list_recipes


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return subparsers.add_parser("recipes", help="list the training recipes")


def run(args: argparse.Namespace) -> int:
    recipes = list_recipes()
    width = max(map(len, recipes), default=0)
    for name, description in recipes.items():
        print(f"{name.ljust(width)}  {description}")
    return 0

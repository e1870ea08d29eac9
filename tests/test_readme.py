"""The README's Set-up and Quick start as a newcomer reads them: `longtail` is reachable after the set-up,
every Quick start command parses, and each train command resolves its recipe and overrides."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from longtail.cli.main import build_parser
from longtail.methods.recipes import resolve

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _commands(section: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", _section(section), flags=re.DOTALL)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("longtail ")]


def test_set_up_says_how_to_reach_the_longtail_command():
    assert "source .venv/bin/activate" in _section("Set-up") and ".venv/bin/longtail" in _section("Set-up")
    assert "source .venv/bin/activate" in _section("Quick start")


def test_the_first_train_command_is_short_and_says_how_long_it_takes():
    first = next(command for command in _commands("Quick start") if command[1] == "train")
    assert any(word.startswith("budget=") for word in first)
    line = next(line for line in _section("Quick start").splitlines() if shlex.join(first) in line)
    assert re.search(r"\d+ (s|min)", line), f"no duration on: {line}"


@pytest.mark.parametrize("command", _commands("Quick start"), ids=shlex.join)
def test_quick_start_command_parses_and_its_recipe_resolves(command):
    args = build_parser().parse_args(command[1:])
    if args.command == "train":
        resolve(args.recipe, args.overrides)

"""Every shipped recipe loads and validates, and no recipe text is cut short by YAML: in a plain (unquoted)
value, `` #`` starts a comment, so ``source: RIDE issue #15`` silently reads as ``RIDE issue``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from longtail.config import RECIPES_DIR, list_recipes
from longtail.methods.recipes import resolve

RECIPE_FILES = sorted(RECIPES_DIR.glob("*.yaml"))


def scalars(node: yaml.Node):
    """Every scalar node under ``node``."""
    if isinstance(node, yaml.ScalarNode):
        yield node
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from scalars(item)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from scalars(key)
            yield from scalars(value)


def cut_values(text: str) -> list[str]:
    """Lines where a comment follows a plain value on the same line and looks like the value's own text: the
    value is prose (it holds a space), or the ``#`` is glued to what follows (``#15``), as no comment is."""
    lines = text.splitlines()
    cut = []
    for node in scalars(yaml.compose(text)):
        if node.style is not None or node.start_mark.line != node.end_mark.line:
            continue
        rest = lines[node.end_mark.line][node.end_mark.column :].lstrip()
        if rest.startswith("#") and (" " in node.value or not rest[1:2].isspace()):
            cut.append(f"line {node.end_mark.line + 1}: {lines[node.end_mark.line].strip()}")
    return cut


def test_a_comment_glued_to_prose_is_reported():
    text = "expected:\n  source: RIDE issue #15)\n  top1: 75.0  # measured\n"
    assert cut_values(text) == ["line 2: source: RIDE issue #15)"]


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda path: path.stem)
def test_no_recipe_text_is_cut_by_a_comment(path: Path):
    assert cut_values(path.read_text()) == [], "quote the value: YAML reads ' #' as the start of a comment"


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_every_recipe_loads_and_validates(name: str):
    config = resolve(name)
    assert config.schedule.epochs >= 1

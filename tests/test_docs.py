"""The documentation site (docs/, built by `make docs`) names every shipped recipe on a method page, and its
navigation lists every page."""

from __future__ import annotations

from pathlib import Path

import yaml

from longtail.config import list_recipes

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _nav_pages(entries: list) -> set[str]:
    pages: set[str] = set()
    for entry in entries:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_recipe_is_on_a_method_page():
    methods = "\n".join(page.read_text() for page in (DOCS / "methods").glob("*.md"))
    missing = [name for name in list_recipes() if f"`{name}`" not in methods]
    assert not missing, f"recipes missing from docs/methods/*.md: {missing}"


def test_the_navigation_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}
    assert _nav_pages(config["nav"]) == pages

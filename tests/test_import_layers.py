"""Imports between the parts of ``longtail`` flow one way, from the command line down to the config and errors.

Every import statement of every module is read with ``ast`` (those inside functions too), so an import moved
into a function to dodge a cycle is still seen. A part is a sub-package (``methods``) or a top-level module
(``errors``); imports within one part are not checked.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import longtail

PACKAGE_ROOT = Path(longtail.__file__).parent

# Lowest first: a part imports only parts of lower layers; parts of one layer do not import each other.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors"}),
    frozenset({"registry", "paths", "distributed", "precision"}),
    frozenset({"config"}),
    frozenset({"data", "models"}),
    frozenset({"losses"}),
    frozenset({"evaluation", "clustering"}),
    frozenset({"methods"}),
    frozenset({"engine"}),
    frozenset({"api", "export"}),
    frozenset({"cli"}),
    frozenset({"__main__", "__init__"}),  # ``python -m longtail``, and the package's lazy re-export of ``api``
)
LAYER_OF = {part: index for index, parts in enumerate(LAYERS) for part in parts}
# Modules of ``longtail.methods`` that are not a paper's: the paper modules may import these, not each other.
SHARED_METHOD_MODULES = frozenset({"__init__", "base", "context", "runs", "batch_mixing", "recipes"})


@dataclass(frozen=True)
class Import:
    """One import of another part: ``path:line`` of the statement, the importing and the imported part."""

    path: Path
    line: int
    source: str
    target: str
    statement: str

    def __str__(self) -> str:
        where = f"{self.path.relative_to(PACKAGE_ROOT.parent)}:{self.line}"
        return f"{where} `{self.statement}` ({self.source} -> {self.target})"


def part_of(path: Path) -> str:
    """The part a module file belongs to: its sub-package, or its own name for a top-level module."""
    relative = path.relative_to(PACKAGE_ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ``longtail`` modules an import statement names (``from longtail import api`` names ``longtail.api``)."""
    if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
    elif node.level:
        raise AssertionError(f"relative import on line {node.lineno}: longtail imports by absolute names")
    elif node.module in ("longtail", "longtail.methods"):
        modules = [f"{node.module}.{alias.name}" for alias in node.names]
    else:
        modules = [node.module or ""]
    return [module for module in modules if module.split(".")[0] == "longtail"]


def imported_parts(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The parts of ``longtail`` that an import statement names."""
    names = [module.split(".") for module in imported_modules(node)]
    return [name[1] if len(name) > 1 else "__init__" for name in names]


def import_statements(path: Path) -> list[ast.Import | ast.ImportFrom]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def cross_part_imports() -> list[Import]:
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        source = part_of(path)
        for node in import_statements(path):
            found += [Import(path, node.lineno, source, target, ast.unparse(node))
                      for target in imported_parts(node) if target != source]
    return found


def find_cycle(imports: list[Import]) -> list[Import]:
    """Imports that close a cycle between parts (one per edge), or [] when the graph is acyclic."""
    edges: dict[str, dict[str, Import]] = {}
    for edge in imports:
        edges.setdefault(edge.source, {}).setdefault(edge.target, edge)
    finished: set[str] = set()

    def visit(part: str, path: list[Import]) -> list[Import]:
        for target, edge in edges.get(part, {}).items():
            on_path = [step.source for step in path]
            if target in on_path:
                return [*path[on_path.index(target):], edge]
            if target not in finished:
                cycle = visit(target, [*path, edge])
                if cycle:
                    return cycle
        finished.add(part)
        return []

    for part in sorted(edges):
        cycle = visit(part, [])
        if cycle:
            return cycle
    return []


def test_every_part_has_a_layer():
    parts = {part_of(path) for path in PACKAGE_ROOT.rglob("*.py")}
    assert not parts - set(LAYER_OF), f"Give these parts of longtail a layer in LAYERS: {sorted(parts - set(LAYER_OF))}"


def test_no_import_cycle_between_parts():
    cycle = find_cycle(cross_part_imports())
    assert not cycle, "Import cycle between parts of longtail:\n  " + "\n  ".join(map(str, cycle))


def test_imports_go_down_the_layers():
    upward = [edge for edge in cross_part_imports() if LAYER_OF[edge.target] >= LAYER_OF[edge.source]]
    layers = " < ".join("/".join(sorted(parts)) for parts in LAYERS)
    assert not upward, f"Imports against the layer order ({layers}):\n  " + "\n  ".join(map(str, upward))


def test_a_cycle_is_reported_with_its_imports():
    path = PACKAGE_ROOT / "methods" / "ride.py"
    down = Import(path, 1, "methods", "engine", "from longtail.engine import x")
    up = Import(path, 2, "engine", "methods", "from longtail.methods import y")
    aside = Import(path, 3, "engine", "errors", "from longtail.errors import z")
    assert sorted(find_cycle([down, aside, up]), key=lambda edge: edge.line) == [down, up]
    assert find_cycle([down, aside]) == []


def methods_module(module: str) -> str | None:
    """``ride`` for ``longtail.methods.ride`` (and anything inside it); None outside ``longtail.methods``."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["longtail", "methods"] and len(parts) > 2 else None


def test_paper_modules_do_not_import_each_other():
    papers = {path.stem: path for path in (PACKAGE_ROOT / "methods").glob("*.py")
              if path.stem not in SHARED_METHOD_MODULES}
    crossing = [
        f"{path.relative_to(PACKAGE_ROOT.parent)}:{node.lineno} `{ast.unparse(node)}`"
        for paper, path in sorted(papers.items())
        for node in import_statements(path)
        if any(methods_module(module) in papers.keys() - {paper} for module in imported_modules(node))
    ]
    assert not crossing, ("Paper modules import each other; move what they share to losses/, models/ or data/:\n  "
                          + "\n  ".join(crossing))

"""docs/extending.md runs as written: its loss, method, model and dataset register, its recipe resolves with
their options checked, trains for four epochs, and a misspelt option fails with the closest valid one."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from longtail.data.datasets import DATASETS
from longtail.losses import LOSSES
from longtail.methods.base import METHODS, import_method_modules
from longtail.models import MODELS

DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
REGISTRIES = (DATASETS, LOSSES, METHODS, MODELS)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def registries_restored():
    """The page registers new names: each registry gets them back out after the test, so that tests iterating a
    registry never meet them. Every shipped method registers first (they do lazily, on first use), so that
    none is lost with the page's."""
    import_method_modules()
    saved = [dict(registry._entries) for registry in REGISTRIES]
    yield
    for registry, entries in zip(REGISTRIES, saved, strict=True):
        registry._entries.clear()
        registry._entries.update(entries)


def test_the_extending_page_runs_as_written(tmp_path, registries_restored):
    page = DOCS_PAGE.read_text()
    for recipe in re.findall(r"```yaml\n# (\S+)\n(.*?)```", page, flags=re.DOTALL):
        (tmp_path / recipe[0]).write_text(recipe[1])
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.chdir(tmp_path), contextlib.redirect_stdout(printed):
        for block in re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL):
            exec(compile(block, str(DOCS_PAGE), "exec"), namespace)  # noqa: S102  (the page's own examples)
    config, summary = namespace["config"], namespace["summary"]
    assert (config.loss.name, config.method.name, config.model.name) == ("delayed-margin-ce", "smoothing-decay",
                                                                         "small-cnn")
    assert 0.0 <= summary["last_test"]["main"]["top1"] <= 1.0
    assert (tmp_path / "runs" / "my-run" / "best.pt").is_file()
    assert "Did you mean 'margin_epoch'?" in printed.getvalue()
    budgeted = namespace["longtail"].load_config(str(tmp_path / "my-recipe.yaml"), ["budget=2"])
    assert budgeted.loss.args["margin_epoch"] == 1 and budgeted.schedule.epochs == 2

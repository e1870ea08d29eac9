"""The public Python API (``longtail.load_run`` / ``run_datasets`` / ``evaluate_run`` / ``predict``): the
examples of docs/python-api.md run as written, against a run trained by the command the page gives."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

import longtail
from longtail.cli.main import main
from longtail.errors import LongtailError

DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
FAST = ["data.args.image_size=8", "train.progress=false"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS_PAGE.read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory) -> Path:
    """The run of the page's `longtail train` command (with 8x8 images, to keep it short), in a fresh folder."""
    folder = tmp_path_factory.mktemp("api")
    command = shlex.split(_blocks("bash")[0].split("#")[0])
    assert command[0] == "longtail"
    with contextlib.chdir(folder), contextlib.redirect_stdout(io.StringIO()):
        split = command.index("--run-dir")
        assert main([*command[1:split], *FAST, *command[split:]]) == 0
    return folder


def test_the_documented_examples_run(docs_run):
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.chdir(docs_run), contextlib.redirect_stdout(printed):
        for block in _blocks("python"):
            exec(compile(block, str(DOCS_PAGE), "exec"), namespace)  # noqa: S102  (the page's own examples)
    run, results = namespace["run"], namespace["results"]
    assert isinstance(run, longtail.api.TrainedModel) and run.info.name == "digits-lt"
    assert 0.0 <= results["main"]["top1"] <= 1.0
    assert results["main"]["thresholds"] == dict(zip(("many", "few"), run.info.shot_thresholds))
    prediction = namespace["prediction"]
    assert prediction.label in run.info.class_names and len(prediction.top) == 3
    assert prediction.probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert "All " in printed.getvalue()


def test_predict_matches_the_method_on_a_preprocessed_batch(docs_run):
    run = longtail.load_run(docs_run / "runs" / "digits-ce" / "best.pt")
    test = longtail.run_datasets(run).test
    batch = torch.stack([test[i][0] for i in range(4)]).float() / 255
    mean, std = torch.tensor(run.info.mean)[:, None, None], torch.tensor(run.info.std)[:, None, None]
    batch = (batch - mean) / std
    expected = run.method.predict(run.model, batch).logits.softmax(dim=1)
    predictions = longtail.predict(run, batch, top=1)
    assert torch.allclose(torch.stack([p.probabilities for p in predictions]), expected, atol=1e-6)


def test_bad_arguments_name_the_problem(docs_run):
    run = longtail.load_run(docs_run / "runs" / "digits-ce")
    with pytest.raises(LongtailError, match="top must be at least 1"):
        longtail.predict(run, torch.zeros(1, 3, 8, 8), top=0)
    with pytest.raises(LongtailError, match="Unknown split 'tset'"):
        longtail.evaluate_run(run, split="tset")

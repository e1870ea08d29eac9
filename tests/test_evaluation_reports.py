"""results.json round trip, the per-class plot and the shot table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longtail.evaluation import evaluate, format_shot_table, plot_per_class_accuracy, read_results, write_results
from longtail.evaluation import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAIN_COUNTS = [300, 120, 100, 60, 20, 19, 5]


@pytest.fixture(scope="module")
def metrics():
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(6).repeat(5)  # class 6 has no test sample
    logits = torch.randn(len(targets), 7, generator=generator) + 3 * torch.nn.functional.one_hot(targets, 7)
    return evaluate(logits, targets, TRAIN_COUNTS, many=100, few=20)


def test_results_json_round_trip(tmp_path, metrics):
    path = write_results(tmp_path / "run" / "results.json", {"test": metrics}, extra={"epoch": 3, "split": "test"})
    loaded = read_results(path)
    assert loaded["epoch"] == 3 and loaded["split"] == "test"
    test = loaded["metrics"]["test"]
    for key in ("top1", "top5", "many", "medium", "few", "macro_f1", "ece", "nll", "balanced_accuracy"):
        assert test[key] == metrics[key]
    assert test["per_class"][:6] == metrics["per_class"][:6].tolist()
    assert test["per_class"][6] is None  # NaN (no test sample) is written as null
    assert test["confusion"] == metrics["confusion"].tolist()
    assert test["shot_sizes"] == metrics["shot_sizes"]
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left behind


def test_large_arrays_go_to_npy_files(tmp_path, monkeypatch, metrics):
    monkeypatch.setattr(report, "MAX_INLINE_VALUES", 10)
    path = write_results(tmp_path / "results.json", metrics)
    raw = json.loads(path.read_text())
    assert raw["metrics"]["confusion"] == {"npy": "results.metrics.confusion.npy"}
    np.testing.assert_array_equal(read_results(path)["metrics"]["confusion"], metrics["confusion"])


def test_results_are_replaced_atomically_and_failures_keep_the_old_file(tmp_path):
    path = write_results(tmp_path / "results.json", {"top1": 0.5})
    with pytest.raises(TypeError):
        write_results(path, {"top1": object()})
    assert read_results(path) == {"metrics": {"top1": 0.5}}
    assert len(list(tmp_path.iterdir())) == 1


def test_plot_is_a_png(tmp_path, metrics):
    path = plot_per_class_accuracy(tmp_path / "per_class.png", metrics["per_class"], TRAIN_COUNTS, title="test")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (840, 480)


def test_plot_with_an_empty_group(tmp_path):
    path = plot_per_class_accuracy(tmp_path / "p.png", [0.5, 1.0], [500, 300])
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_shot_table(metrics):
    table = format_shot_table({"last": metrics, "best": {**metrics, "few": None}})
    lines = table.splitlines()
    assert lines[0].split() == ["All", "Many", "(2)", "Medium", "(3)", "Few", "(2)"]
    assert lines[1].split() == ["last"] + [f"{100 * metrics[k]:.2f}" for k in ("top1", "many", "medium", "few")]
    assert lines[2].split()[-1] == "-"
    assert len({len(line) for line in lines}) == 1  # aligned columns

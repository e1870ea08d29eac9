"""`longtail cluster`: tiny P²OT / SP²OT runs on digits-lt through the trainer with their clustering metrics,
re-evaluation of a finished run, clustering of fixed features with the baselines, and one-line errors."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from longtail.cli.main import main
from longtail.evaluation.report import read_results
from longtail.methods.runs import load_checkpoint

TINY = ["schedule.epochs=2", "data.args.image_size=8", "data.batch_size=32", "method.args.bank_batches=3",
        "train.progress=false"]
METRICS = ("acc", "mean_class_acc", "nmi", "ari", "macro_f1", "head", "medium", "tail")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and OpenMP threads spin badly on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*argv: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(list(argv)) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def p2ot_run(tmp_path_factory):
    """A 2-epoch p2ot-digits-lt run through `longtail cluster`: (run dir, what it printed)."""
    run_dir = tmp_path_factory.mktemp("p2ot") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        printed = run_cli("cluster", "--recipe", "p2ot-digits-lt", *TINY, "--run-dir", str(run_dir))
    finally:
        torch.set_num_threads(threads)
    return run_dir, printed


def test_cluster_trains_and_reports_the_clustering_metrics(p2ot_run):
    run_dir, printed = p2ot_run
    assert "ACC" in printed and "NMI" in printed and "last test" in printed
    results = json.loads((run_dir / "clustering.json").read_text())
    metrics = results["last test"]
    assert all(0.0 <= metrics[key] <= 1.0 for key in METRICS)
    assert len(set(metrics["mapping"])) == len(metrics["mapping"]) <= 10  # one class per cluster
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2]
    assert all(np.isfinite(record["loss_normalized"]) for record in records)
    assert records[0]["loss_rho"] < records[1]["loss_rho"] < 1.0
    report = read_results(run_dir / "report" / "last_test" / "results.json")["metrics"]
    assert report["cluster_acc"] == pytest.approx(metrics["acc"])
    assert report["cluster_nmi"] == pytest.approx(metrics["nmi"])


def test_the_epoch_with_the_lowest_normalised_loss_is_kept_and_reported_as_best(p2ot_run):
    run_dir, printed = p2ot_run
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    lowest = min(records, key=lambda record: record["loss_normalized"])
    assert load_checkpoint(run_dir / "best.pt")["best"]["epoch"] == lowest["epoch"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == lowest["epoch"] and summary["best_metric_name"] == "-loss_normalized"
    assert summary["best_metric"] == pytest.approx(-lowest["loss_normalized"])
    assert "best_test" in summary and "best test" in printed
    best = json.loads((run_dir / "clustering.json").read_text())["best test"]
    assert all(0.0 <= best[key] <= 1.0 for key in METRICS)


def test_the_checkpoint_carries_the_logits_bank(p2ot_run):
    run_dir, _ = p2ot_run
    model = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    assert int(model["memory.filled"]) == 3 * 32
    assert model["memory.indices"].min() >= 0


def test_a_finished_run_is_re_evaluated_from_its_run_dir(p2ot_run):
    run_dir, _ = p2ot_run
    before = json.loads((run_dir / "clustering.json").read_text())
    printed = run_cli("cluster", "--run-dir", str(run_dir))
    assert "last test" in printed
    assert json.loads((run_dir / "clustering.json").read_text()) == before


def test_sp2ot_builds_the_semantic_graph_once_and_trains(tmp_path, monkeypatch):
    import longtail.methods.p2ot as p2ot

    builds = []
    original = p2ot.knn_similarity
    monkeypatch.setattr(p2ot, "knn_similarity", lambda *args, **kw: builds.append(1) or original(*args, **kw))
    run_dir = tmp_path / "run"
    run_cli("cluster", "--recipe", "sp2ot-digits-lt", *TINY, "schedule.epochs=1", "method.args.mm_max_iter=3",
            "--run-dir", str(run_dir))
    model = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    neighbours, weights = model["graph.neighbours"], model["graph.weights"]
    assert builds == [1] and bool(model["graph.ready"]) and neighbours.shape[1] == 20
    assert not torch.any(neighbours == torch.arange(len(neighbours)).unsqueeze(1))  # no self-loops
    assert torch.all((weights > 0) & (weights <= 1))
    assert 0.0 <= json.loads((run_dir / "clustering.json").read_text())["last test"]["nmi"] <= 1.0


def test_fixed_features_are_clustered_by_the_baselines(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 10
    targets = np.repeat(np.arange(3), [40, 15, 5])
    features = centres[targets] + rng.normal(size=(60, 8))
    np.savez(tmp_path / "features.npz", features=features, targets=targets, train_counts=[40, 15, 5])
    printed = run_cli("cluster", "--features", str(tmp_path / "features.npz"), "--methods", "kmeans,sinkhorn")
    rows = {line.split()[0]: line.split()[1:] for line in printed.strip().splitlines()[1:]}
    assert set(rows) == {"kmeans", "sinkhorn"}
    assert float(rows["kmeans"][0]) == 100.0  # well-separated blobs: k-means is exact


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cluster", "--recipe", "digits-ce"], "not a clustering method"),
        (["cluster", "--features", "missing.npz"], "not found"),
        (["cluster", "--inat-subset", "100"], "--lists"),
        (["cluster"], "--recipe"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("longtail: error: ") and "\n" not in err and message in err


def test_unknown_baseline_is_named(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", features=np.zeros((4, 2)), targets=np.zeros(4, dtype=np.int64))
    assert main(["cluster", "--features", str(tmp_path / "f.npz"), "--methods", "kmeans,dbscan"]) == 2
    assert "dbscan" in capsys.readouterr().err

"""`longtail recipes / train / eval / predict` in-process, and their one-line errors for bad input."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.cli.main import main

FAST = ["schedule.epochs=2", "data.args.image_size=8", "train.progress=false"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch digits-ce run through the CLI: (run dir, what it printed)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(["train", "--recipe", "digits-ce", *FAST, "--run-dir", str(run_dir)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return run_dir, printed.getvalue()


@pytest.fixture
def trained_run(trained):
    return trained[0]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("longtail: error: ") and "\n" not in err
    return err


def test_recipes_lists_the_shipped_recipes(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "digits-ce" in out and "cifar100-lt-if100-ldam-drw" in out and "_cifar" not in out


@pytest.mark.slow
def test_train_prints_an_explained_summary_and_where_to_look_next(trained):
    run_dir, printed = trained
    for name in ("config.yaml", "checkpoint.pt", "best.pt", "log.jsonl", "summary.json"):
        assert (run_dir / name).is_file()
    summary = printed[printed.index("Test accuracy, % (digits-lt") :]
    header, best, last = summary.splitlines()[2:5]
    assert header.split() == ["All", "Many", "(4)", "Medium", "(4)", "Few", "(2)"]
    assert best.startswith("best weights (epoch") and last.startswith("last weights (epoch 2)")
    assert "Many / Medium / Few: the mean accuracy" in summary and "never the test" in summary
    assert "tau_norm (tau-normalised classifier)" in summary
    assert len(summary.splitlines()) < 20
    plot = run_dir / "report" / "best_test" / "per_class.png"
    assert f"Plot:        {plot}" in summary and plot.is_file()
    assert f"Run folder:  {run_dir}" in summary and f"longtail eval {run_dir}" in summary


@pytest.mark.slow
def test_eval_of_a_run_dir_prints_last_and_best(trained_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run), "eval.tau_norm=1.0"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert all(column in header for column in ("All", "Many", "Medium", "Few"))
    assert "last test" in out and "best val" in out and "best test tau_norm" in out


@pytest.mark.slow
def test_eval_of_a_checkpoint_file_writes_reports(trained_run, tmp_path, capsys):
    assert main(["eval", str(trained_run / "best.pt"), "--split", "test", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "test" / "results.json").is_file() and (tmp_path / "test" / "per_class.png").is_file()


@pytest.mark.slow
def test_predict_prints_top5_with_probabilities(trained_run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digit = load_digits().images[0] * (255 / 16)
    path = tmp_path / "zero.png"
    Image.fromarray(digit.astype(np.uint8)).save(path)
    capsys.readouterr()
    assert main(["predict", str(trained_run / "checkpoint.pt"), str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(path) and len(lines) == 6
    percentages = [float(line.split("%")[0]) for line in lines[1:]]
    assert percentages == sorted(percentages, reverse=True) and sum(percentages) <= 100.01


@pytest.mark.slow
def test_training_a_finished_run_dir_again_is_refused(trained_run, capsys):
    assert main(["train", "--recipe", "digits-ce", *FAST, "--run-dir", str(trained_run)]) == 2
    assert "already holds a finished run" in error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--recipe", "digit-ce"], "Unknown recipe 'digit-ce'. Did you mean 'digits-ce'?"),
        (["train", "--recipe", "digits-ce", "optim.lrr=0.1"], "Did you mean 'optim.lr'?"),
        (["train", "--recipe", "digits-ce", "schedule.epochs=many"], "'schedule.epochs' must be an integer"),
        (["train"], "Give --recipe NAME"),
        (["eval", "no/such/run"], "No checkpoint at no/such/run;"),
    ],
)
def test_bad_input_gives_one_line(argv, message, capsys):
    assert main(argv) == 2
    assert message in error_line(capsys)


@pytest.mark.slow
def test_eval_refuses_to_change_training_settings(trained_run, capsys):
    assert main(["eval", str(trained_run), "optim.lr=3"]) == 2
    assert "cannot change 'optim.lr'" in error_line(capsys)


@pytest.mark.slow
def test_predict_names_an_unreadable_image(trained_run, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["predict", str(trained_run / "checkpoint.pt"), str(broken)]) == 2
    assert "broken.png" in error_line(capsys)

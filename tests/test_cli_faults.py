"""Bad input to the commands ends in one line that names the problem and the fix (never a traceback), in the
words of the command that was run, and leaves no run folder behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY_MLP

from longtail.cli.main import main
from longtail.errors import LongtailError

FAST = [f"model.name={TINY_MLP}", "schedule.epochs=1", "data.args.image_size=8", "train.progress=false"]

pytestmark = pytest.mark.usefixtures("one_thread")


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("longtail: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1", "Config key 'optim.lr' must be >= 0, got -1.0."),
        ("data.batch_size=0", "Config key 'data.batch_size' must be >= 1, got 0."),
        ("optim.betas=[0.9,1]", "Config key 'optim.betas' must be >= 0 and < 1, got [0.9, 1.0]."),
        ("optim.nesterov=true optim.momentum=0", "Nesterov momentum requires a momentum"),
    ],
)
def test_bad_settings_name_the_key_and_leave_no_run_folder(override, message, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "bad"
    assert main(["train", "--recipe", "digits-ce", *FAST, *override.split(), "--run-dir", str(run_dir)]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_a_data_setting_inside_data_args_names_its_own_key(capsys):
    assert main(["train", "--recipe", "digits-ce", *FAST, "data.args={root: /tmp, seed: 3}"]) == 2
    assert "Set 'data.root' instead of 'data.args.root', 'train.seed' instead of 'data.args.seed'" in error_line(capsys)


def test_a_missing_data_root_is_named_in_the_words_of_train(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGTAIL_DATA", str(tmp_path / "nonexistent"))
    assert main(["train", "--recipe", "cifar10-lt-if100-ce", "--run-dir", str(tmp_path / "run")]) == 2
    message = error_line(capsys)
    assert "(from $LONGTAIL_DATA) does not exist. Give data.root=<folder> or set LONGTAIL_DATA" in message
    assert "--root" not in message and not (tmp_path / "run").exists()


def test_missing_cifar_names_download_as_each_command_spells_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--recipe", "cifar10-lt-if100-ce", f"data.root={tmp_path}", "--run-dir", str(run_dir)]) == 2
    fixes = "To fetch it, give data.args.download=true; to read it from another folder, give data.root=<folder>."
    assert fixes in error_line(capsys)
    assert main(["datasets", "describe", "cifar10-lt", "--root", str(tmp_path)]) == 0  # the counts, without images
    fixes = "To fetch it, give --download; to read it from another folder, give --root <folder>."
    assert fixes in capsys.readouterr().out


def test_describe_passes_dataset_options_and_names_them_as_it_takes_them(tmp_path, capsys):
    assert main(["datasets", "describe", "imagenet-lt", "--root", str(tmp_path), "--set", f"list_root={tmp_path}"]) == 2
    assert "ImageNet_LT_train.txt' not found; give --set list_root=<folder with the split lists>." in error_line(capsys)


def test_a_recipe_file_that_does_not_exist_is_named(tmp_path, capsys):
    assert main(["train", "--recipe", str(tmp_path / "nope.yaml")]) == 2
    assert f"Recipe file '{tmp_path / 'nope.yaml'}' does not exist." in error_line(capsys)


def test_a_file_that_is_no_checkpoint_is_named_without_unsafe_advice(tmp_path, capsys):
    (tmp_path / "README.md").write_text("# not a checkpoint\n")
    assert main(["eval", str(tmp_path / "README.md")]) == 2
    message = error_line(capsys)
    assert message.endswith("README.md is not a readable longtail checkpoint: it is not a file written by torch.save.")
    assert "weights_only" not in message


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("README.md", b"# words\n", "README.md is not a readable features file: it is not a file written by torch"),
        ("fake.npz", b"hello\n", "fake.npz is not a readable .npz of number arrays."),
    ],
)
def test_cluster_names_a_file_that_holds_no_features(name, content, message, tmp_path, capsys):
    (tmp_path / name).write_bytes(content)
    assert main(["cluster", "--features", str(tmp_path / name)]) == 2
    line = error_line(capsys)
    assert message in line and "`longtail predict RUN --features OUT.npz`" in line


def test_cluster_names_pickled_objects_in_an_npz(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "objects.npz", features=np.array([{"a": 1}], dtype=object), targets=np.zeros(1))
    assert main(["cluster", "--features", str(tmp_path / "objects.npz")]) == 2
    assert "objects.npz is not a readable .npz of number arrays." in error_line(capsys)


@pytest.mark.parametrize(("top", "shown"), [("-3", "-3"), ("0", "0"), ("five", "'five'")])
def test_predict_refuses_a_top_that_is_no_positive_count(top, shown, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(tmp_path / "run"), str(tmp_path / "image.png"), "--top", top])
    assert exit_.value.code == 2
    assert f"argument --top: must be a positive integer, got {shown}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--recipe", "digits-ce", *FAST, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def misfit_run(trained_run, tmp_path_factory) -> Path:
    """A finished run whose checkpoints hold a weight of a shape that the model of their config does not have."""
    run_dir = tmp_path_factory.mktemp("misfit") / "run"
    shutil.copytree(trained_run, run_dir)
    for name in ("checkpoint.pt", "best.pt"):
        state = torch.load(run_dir / name, weights_only=True)
        state["model"]["body.1.weight"] = torch.zeros(7, 3)
        torch.save(state, run_dir / name)
    return run_dir


@pytest.mark.parametrize(
    "command",
    [["predict", "{run}/checkpoint.pt", "{image}"], ["eval", "{run}"], ["eval", "{run}", "eval.tau_norm=1.0"]],
)
def test_weights_that_do_not_fit_their_config_are_named(command, misfit_run, tmp_path, capsys):
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = [part.format(run=misfit_run, image=image) for part in command]
    capsys.readouterr()
    assert main(argv) == 2
    message = error_line(capsys)
    assert "do not fit the model its config describes (1 of another shape (body.1.weight))" in message
    assert "changed settings" not in message


def test_settings_that_change_the_model_are_named_as_the_misfit(trained_run):
    from longtail.config import apply_overrides, from_dict, parse_overrides
    from longtail.methods.runs import load_trained_model

    stored = load_trained_model(trained_run).config.to_dict()
    changed = from_dict(apply_overrides(stored, parse_overrides(["model.name=resnet32"])))
    with pytest.raises(LongtailError, match=r"do not fit the model of the changed settings \(\d+ missing"):
        load_trained_model(trained_run, config=changed)


def test_predict_features_and_cluster_take_where_a_moved_runs_data_is(tmp_path, capsys):
    """Commands that rebuild a finished run's dataset accept its new location, and name it as they take it."""
    from test_data_datasets import write_tree

    tree, moved, features = tmp_path / "tree", tmp_path / "moved", tmp_path / "features.npz"
    write_tree(tree, {"train": [6, 6], "test": [3, 3]})
    data = ["data.name=imagefolder-lt", f"data.root={tree}", "data.imbalance=1", "data.val_per_class=0",
            "data.batch_size=4"]
    run = tmp_path / "run"
    assert main(["train", "--recipe", "digits-ce", *data, "schedule.epochs=1", "train.progress=false",
                 "--run-dir", str(run)]) == 0
    capsys.readouterr()
    tree.rename(moved)

    assert main(["predict", str(run), "--features", str(features)]) == 2
    assert "--set data.root=<folder>" in error_line(capsys)
    assert main(["predict", str(run), "--features", str(features), "--set", "optim.lr=1"]) == 2
    assert "`longtail predict` cannot change 'optim.lr'" in error_line(capsys)
    assert main(["predict", str(run), "--features", str(features), "--set", f"data.root={moved}"]) == 0
    assert len(np.load(features)["targets"]) == 12

    assert main(["cluster", "--run-dir", str(run)]) == 2
    assert "data.root=<folder>" in error_line(capsys)
    assert main(["cluster", "--run-dir", str(run), f"data.root={moved}"]) == 0


def test_a_training_split_smaller_than_a_batch_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--recipe", "digits-ce", "data.imbalance=100", "data.val_per_class=0",
                 "data.batch_size=512", "train.progress=false", "--run-dir", str(run)]) == 2
    message = error_line(capsys)
    assert "fewer than one batch" in message and "Lower data.batch_size" in message
    assert not run.exists()

"""Bad input to the commands ends in one line that names the problem and the fix (never a traceback), in the
words of the command that was run, and leaves no run folder behind."""

from __future__ import annotations

import pytest
from tiny import TINY_MLP

from longtail.cli.main import main

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
    assert main(["datasets", "describe", "cifar10-lt", "--root", str(tmp_path)]) == 2
    assert "To fetch it, give --download; to read it from another folder, give --root <folder>." in error_line(capsys)


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

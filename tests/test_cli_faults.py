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

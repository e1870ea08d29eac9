"""``longtail datasets`` and ``longtail datasets describe``."""

from __future__ import annotations

import pytest

from longtail.cli.main import main


def test_lists_dataset_names(capsys):
    assert main(["datasets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [
        "cifar10-lt", "cifar100-lt", "digits-lt", "imagefolder-lt", "imagenet-lt", "imagenet-r", "inat2018",
        "places-lt",
    ]


@pytest.mark.shared
def test_describe_cifar10_lt(shared_data, capsys):
    assert main(["datasets", "describe", "cifar10-lt", "--imbalance", "100", "--root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "    9  truck            50  medium" in out
    assert "many 8, medium 2, few 0" in out
    assert "total: train 12,406  val 0  test 10,000" in out


def test_describe_digits_with_profile(capsys):
    argv = ["datasets", "describe", "digits-lt", "--imbalance", "10", "--profile", "step", "--val-per-class", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "shot groups (many > 24.8, medium 4.96..24.8, few < 4.96)" in out
    assert "val 50" in out


def test_describe_reports_the_size_of_small_images_kept_in_memory(tmp_path, capsys):
    from PIL import Image

    for split, count in (("train", 2), ("test", 1)):
        for label in range(2):
            folder = tmp_path / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (28, 28), (40 * label + i,) * 3).save(folder / f"{i}.png")
    assert main(["datasets", "describe", "imagefolder-lt", "--root", str(tmp_path), "--imbalance", "1"]) == 0
    assert "imagefolder-lt: 2 classes, images 28x28 (in memory)" in capsys.readouterr().out


def test_describe_prints_the_profile_of_cifar_without_its_images(tmp_path, capsys):
    assert main(["datasets", "describe", "cifar100-lt", "--imbalance", "50", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cifar100-lt: 100 classes; the images are absent, the counts below follow from the profile. "
                          f"CIFAR-100 not found under '{tmp_path}'")
    assert "To fetch it, give --download; to read it from another folder, give --root <folder>." in out
    assert "    0  apple              500  many" in out and "   99  worm                10  few" in out
    assert "total: train 12,608  val 0  test 10,000" in out  # CIFAR-100-LT IF 50, as published


@pytest.mark.shared
def test_the_profile_without_images_equals_the_one_with_them(shared_data):
    from longtail.data import create_datasets

    settings = {"imbalance": 100, "val_per_class": 20, "root": shared_data}
    with_images = create_datasets("cifar10-lt", **settings)
    labels_only = create_datasets("cifar10-lt", labels_only=True, **settings)
    for field in ("class_names", "train_counts", "shot_thresholds", "image_size", "mean", "std"):
        assert getattr(labels_only.info, field) == getattr(with_images.info, field)
    assert (len(labels_only.val), len(labels_only.test)) == (len(with_images.val), len(with_images.test))


@pytest.mark.parametrize("argv, message", [
    (["datasets", "describe", "digits-lt", "--imbalance", "0.5"], "Imbalance factor must be >= 1"),
    (["datasets", "describe", "digit-lt"], "Did you mean 'digits-lt'"),
    (["datasets", "describe", "imagenet-lt", "--root", "/nonexistent/data"], "Data root '/nonexistent/data' does not"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1

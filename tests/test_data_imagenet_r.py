"""``imagenet-r``: natural counts, the seeded held-out test split, class names, errors and the P²OT recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.data import create_datasets
from longtail.data.folders_and_lists import IMAGENET_MEAN
from longtail.errors import LongtailError
from longtail.methods.base import create_method
from longtail.methods.context import create_datasets_for
from longtail.methods.recipes import resolve

COUNTS = {"n00000003": 23, "n00000001": 40, "n00000002": 31}  # written unsorted: labels follow sorted wnids
WNIDS = sorted(COUNTS)


def write_renditions(folder: Path, counts: dict[str, int]) -> Path:
    """``folder/<wnid>/<i>.jpg``: tiny JPEGs, PNG for every third so both formats are listed."""
    for wnid, count in counts.items():
        (folder / wnid).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(folder / wnid / f"{wnid}_{i:03d}.{'png' if i % 3 else 'jpg'}")
    return folder


@pytest.fixture
def data_root(tmp_path) -> Path:
    write_renditions(tmp_path / "imagenet-r", COUNTS)
    return tmp_path


def paths(dataset) -> set[str]:
    return set(dataset.relative_paths)


def test_natural_counts_and_balanced_held_out_test(data_root):
    splits = create_datasets("imagenet-r", root=data_root)
    info = splits.info
    assert info.name == "imagenet-r" and info.class_names == WNIDS
    assert info.train_counts == [COUNTS[w] - 20 for w in WNIDS] == [20, 11, 3]
    assert np.bincount(splits.test.targets).tolist() == [20, 20, 20]
    assert splits.val is None
    assert (info.image_size, info.mean) == (224, IMAGENET_MEAN)
    image, label = splits.test[0]
    assert image.size == (4, 4) and label == 0


def test_train_and_test_are_disjoint_and_cover_every_image(data_root):
    splits = create_datasets("imagenet-r", root=data_root, test_per_class=5)
    train, test = paths(splits.train), paths(splits.test)
    assert not train & test
    assert len(train | test) == sum(COUNTS.values())
    assert all(p.split("/")[0] == WNIDS[label] for p, label in zip(splits.test.relative_paths, splits.test.targets))


def test_held_out_split_is_fixed_by_split_seed_not_by_the_run_seed(data_root):
    first, other_run = (create_datasets("imagenet-r", root=data_root, seed=seed) for seed in (3, 4))
    other_split = create_datasets("imagenet-r", root=data_root, seed=3, split_seed=1)
    assert paths(first.test) == paths(other_run.test)
    assert paths(first.test) != paths(other_split.test)
    assert first.info.train_counts == other_split.info.train_counts


def test_profile_options_do_not_reshape_the_natural_imbalance(data_root):
    plain = create_datasets("imagenet-r", root=data_root)
    asked = create_datasets("imagenet-r", root=data_root, imbalance=2, profile="step", selection="first")
    assert paths(asked.train) == paths(plain.train) and paths(asked.test) == paths(plain.test)


def test_validation_is_carved_from_the_training_images(data_root):
    splits = create_datasets("imagenet-r", root=data_root, val_per_class=2)
    assert np.bincount(splits.val.targets).tolist() == [2, 2, 1]  # a class gives at most half its images
    assert splits.info.train_counts == [18, 9, 2]
    assert not paths(splits.val) & (paths(splits.train) | paths(splits.test))


def test_readable_names_from_the_release_readme_or_a_names_file(data_root):
    folder = data_root / "imagenet-r"
    (folder / "README.txt").write_text("ImageNet-R classes:\nn00000001 goldfish\nn00000003 great_white_shark\n")
    assert create_datasets("imagenet-r", root=data_root).info.class_names == [
        "goldfish", "n00000002", "great_white_shark"]
    names = data_root / "names.txt"
    names.write_text("n00000002 hammerhead\n")
    assert create_datasets("imagenet-r", root=data_root, names_file=names).info.class_names == [
        "n00000001", "hammerhead", "n00000003"]
    with pytest.raises(LongtailError, match="names_file .*absent.txt"):
        create_datasets("imagenet-r", root=data_root, names_file=data_root / "absent.txt")


def test_image_root_points_to_a_copy_elsewhere(tmp_path):
    folder = write_renditions(tmp_path / "elsewhere" / "renditions", {"n00000001": 3, "n00000002": 4})
    splits = create_datasets("imagenet-r", root=tmp_path / "no-root", image_root=folder, test_per_class=1)
    assert splits.info.train_counts == [2, 3]
    assert splits.train.path(0).parent.parent == folder


def test_missing_folder_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(LongtailError, match=r"'.*imagenet-r' not found.*imagenet-r\.tar.*image_root="):
        create_datasets("imagenet-r", root=tmp_path)


@pytest.mark.parametrize("test_per_class", [23, 30])
def test_class_without_training_images_is_named(data_root, test_per_class):
    with pytest.raises(LongtailError, match=r"n00000003 \(23\).*lower test_per_class"):
        create_datasets("imagenet-r", root=data_root, test_per_class=test_per_class)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_test_per_class_must_be_a_positive_integer(data_root, bad):
    with pytest.raises(LongtailError, match="test_per_class must be an integer >= 1"):
        create_datasets("imagenet-r", root=data_root, test_per_class=bad)


def test_unknown_option_lists_the_options(data_root):
    with pytest.raises(LongtailError, match="no option 'list_root'.*test_per_class"):
        create_datasets("imagenet-r", root=data_root, list_root=data_root)


@pytest.mark.parametrize("name, transport", [("p2ot-imagenet-r", "p2ot"), ("sp2ot-imagenet-r", "sp2ot")])
def test_clustering_recipes_resolve_and_build_on_the_data(data_root, name, transport):
    config = resolve(name, [f"data.root={data_root}", "data.args.test_per_class=2",
                            "model.args.pretrained_path=dino.pth", "method.args.num_clusters=3"])
    assert (config.data.name, config.data.val_per_class, config.model.name) == (
        "imagenet-r", 0, "timm:vit_base_patch16_224.dino")
    assert resolve(name).data.args == {"test_per_class": 20}
    assert resolve(name).method.args["num_clusters"] == 200
    splits = create_datasets_for(config)
    assert splits.info.train_counts == [38, 29, 21]
    assert create_method(config, splits.info).transport == transport

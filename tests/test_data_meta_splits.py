"""``create_datasets(..., meta_file=...)``: meta-information from an iNaturalist JSON or a side file reaches
every split in sample order, and the loader's batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.config import from_dict
from longtail.data import create_datasets, create_loader
from longtail.data.meta import SPATIOTEMPORAL, encode_spatiotemporal
from longtail.engine.trainer import train
from longtail.errors import LongtailError

CLASSES = ("ant", "bee")


@pytest.fixture
def tree(tmp_path):
    """root/{train,test}/<class>/<i>.png: 3 training and 1 test image per class, 8x8."""
    for split, count in (("train", 3), ("test", 1)):
        for label, name in enumerate(CLASSES):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (40 * label + i, 0, 0)).save(folder / f"{i}.png")
    return tmp_path


def paths(tree, split):
    """Image paths relative to the data root (``train/ant/0.png``): train and test share class-relative names."""
    return sorted(p.relative_to(tree).as_posix() for p in (tree / split).rglob("*.png"))


def splits_with(tree, meta_file, **options):
    return create_datasets(
        "imagefolder-lt", root=tree, imbalance=1.0, in_memory=True, image_size=8, meta_file=meta_file, **options
    )


def test_inaturalist_json_gives_each_split_its_spatiotemporal_meta(tree):
    train_paths = paths(tree, "train")
    images = [
        {"id": i, "file_name": path, "date": f"2018-0{i + 1}-01 10:00:00", "latitude": 10.0 * i, "longitude": 5.0}
        for i, path in enumerate(train_paths)
    ]
    (tree / "train.json").write_text(json.dumps({"images": images, "annotations": []}))
    with pytest.warns(UserWarning, match="test split"):
        splits = splits_with(tree, "train.json")  # relative to the data root
    meta = splits.train.meta[SPATIOTEMPORAL]
    assert meta.shape == (len(splits.train), 7) and meta.dtype == torch.float32
    month = np.arange(1, len(train_paths) + 1)
    hours, longitudes = np.full(len(month), 10.0), np.full(len(month), 5.0)
    expected = encode_spatiotemporal(month, hours, 10.0 * np.arange(len(month)), longitudes)
    order = [train_paths.index(path) for path in _split_paths(splits.train)]
    np.testing.assert_allclose(meta.numpy(), expected[order], atol=1e-6)
    assert torch.equal(splits.test.meta[SPATIOTEMPORAL], torch.zeros(len(splits.test), 7))  # not in the file
    batch = next(iter(create_loader(splits.train, batch_size=6, train=False, augment="none")))
    assert torch.equal(batch.meta[SPATIOTEMPORAL], meta[batch.indices])


def _split_paths(dataset):
    return [f"train/{dataset.store.relative_paths[i]}" for i in dataset.source_indices]


def test_side_files_merge_and_keep_the_attribute_group(tree):
    rows = ["path,a,b"] + [f"{path},{i},{2 * i}" for i, path in enumerate(paths(tree, "train"))]
    (tree / "train.csv").write_text("\n".join(rows) + "\n")
    rows = ["path,a,b"] + [f"{path},7,7" for path in paths(tree, "test")]
    (tree / "test.csv").write_text("\n".join(rows) + "\n")
    splits = splits_with(tree, [str(tree / "train.csv"), str(tree / "test.csv")])
    attributes = splits.train.meta["attributes"]
    assert attributes.shape == (len(splits.train), 2) and torch.equal(attributes[:, 1], 2 * attributes[:, 0])
    assert torch.equal(splits.test.meta["attributes"], torch.full((len(splits.test), 2), 7.0))


def test_bad_meta_options_are_refused(tree):
    with pytest.raises(LongtailError, match="without meta_file"):
        splits_with(tree, None, meta_locations="locations.json")
    (tree / "side.csv").write_text("path,a\nx.png,1\n")
    with pytest.raises(LongtailError, match="iNaturalist"):
        splits_with(tree, "side.csv", meta_locations="side.csv")
    with pytest.raises(LongtailError, match="None of the"):
        splits_with(tree, "side.csv")
    with pytest.raises(LongtailError, match="image files"):
        create_datasets("digits-lt", imbalance=10, meta_file=str(tree / "side.csv"))


def test_paths_relative_to_the_image_folder_also_match(tree):
    rows = ["path,a"] + [f"ant/{i}.png,{i + 1}" for i in range(3)]
    (tree / "side.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="no meta entry|test split"):  # bees and the test split are not listed
        splits = splits_with(tree, "side.csv", val_per_class=None)
    ants = splits.train.targets == 0
    assert sorted(splits.train.meta["attributes"][torch.from_numpy(ants), 0].tolist()) == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_trainer_feeds_file_meta_to_metafg_and_reports_with_and_without_it(tree, tmp_path_factory):
    rows = ["path,a,b"] + [f"{path},{i % 2},1" for i, path in enumerate(paths(tree, "train") + paths(tree, "test"))]
    (tree / "side.csv").write_text("\n".join(rows) + "\n")
    config = from_dict({
        "data": {"name": "imagefolder-lt", "root": str(tree), "imbalance": 1, "batch_size": 2, "eval_batch_size": 4,
                 "augment": "none", "args": {"in_memory": True, "image_size": 32, "meta_file": "side.csv"}},
        "model": {"name": "metafg_0", "args": {"img_size": 32, "meta_groups": {"attributes": 2}}},
        "optim": {"name": "adamw", "lr": 1e-4},
        "schedule": {"name": "constant", "epochs": 1},
        "train": {"progress": False},
    })
    summary = train(config, tmp_path_factory.mktemp("run"))
    assert {"main", "no_meta"} <= summary["last_test"].keys()

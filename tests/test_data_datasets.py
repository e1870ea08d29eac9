"""Datasets by name: sources (CIFAR pickles, ImageFolder trees, list files, digits), splits and bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from longtail.data import DATASETS, create_datasets, create_loader
from longtail.data.containers import ImageFiles, InMemoryImages
from longtail.data.datasets import default_data_root
from longtail.data.reading import CIFAR10_FORMAT, CIFAR100_FORMAT, CifarFormat
from longtail.errors import LongtailError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path_factory.getbasetemp() / "longtail-cache"))


def write_tree(root: Path, splits: dict[str, list[int]], size: int = 8, suffix: str = ".png") -> None:
    """``root/<split>/c<k>/<i><suffix>``: image i of class k is filled with grey level 10 * k + i."""
    for split, per_class in splits.items():
        for label, count in enumerate(per_class):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (size, size), (10 * label + i,) * 3).save(folder / f"{i:03d}{suffix}")


def random_cifar(num_classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    return rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8), labels


def write_cifar(
    folder: Path, fmt: CifarFormat, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
    class_names: list[str],
) -> None:
    """Write images (N, 3, 32, 32) uint8 and labels in the official pickle layout of ``fmt``."""
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = train
    splits = np.array_split(np.arange(len(train_labels)), len(fmt.train_files))
    for name, rows in zip(fmt.train_files, splits):
        _dump_cifar_part(folder / name, train_images[rows], train_labels[rows], fmt.label_key)
    _dump_cifar_part(folder / fmt.test_file, *test, fmt.label_key)
    with (folder / fmt.meta_file).open("wb") as f:
        pickle.dump({fmt.names_key: list(class_names)}, f, protocol=2)


def _dump_cifar_part(path: Path, images: np.ndarray, labels: np.ndarray, label_key: str) -> None:
    entry = {"data": np.asarray(images, np.uint8).reshape(len(images), -1), label_key: [int(x) for x in labels]}
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=2)


def test_registry_lists_every_dataset():
    assert DATASETS.names() == [
        "cifar10-lt", "cifar100-lt", "digits-lt", "imagefolder-lt", "imagenet-lt", "imagenet-r", "inat2018",
        "places-lt",
    ]


@pytest.mark.parametrize(
    "fmt, num_classes, name", [(CIFAR10_FORMAT, 10, "cifar10-lt"), (CIFAR100_FORMAT, 100, "cifar100-lt")]
)
def test_cifar_pickle_round_trip(tmp_path, fmt, num_classes, name):
    train, test = random_cifar(num_classes, 20, 0), random_cifar(num_classes, 2, 1)
    names = [f"class{i}" for i in range(num_classes)]
    write_cifar(tmp_path / fmt.folder, fmt, train, test, names)

    splits = create_datasets(name, root=tmp_path, imbalance=10)
    assert splits.info.class_names == names
    assert splits.info.train_counts[0] == 20 and splits.info.train_counts[-1] == 2
    assert isinstance(splits.train, InMemoryImages)
    np.testing.assert_array_equal(splits.train.images.numpy(), train[0][splits.train.source_indices])
    np.testing.assert_array_equal(splits.train.targets, train[1][splits.train.source_indices])
    np.testing.assert_array_equal(splits.test.images.numpy(), test[0])
    np.testing.assert_array_equal(splits.test.targets, test[1])


def test_cifar_missing_names_expected_paths_and_download(tmp_path):
    with pytest.raises(LongtailError, match="cifar-10-batches-py.*give download=true"):
        create_datasets("cifar10-lt", root=tmp_path)


@pytest.mark.shared
def test_default_root_finds_shared_cifar10_jpeg(shared_data, monkeypatch):
    monkeypatch.delenv("LONGTAIL_DATA", raising=False)
    assert default_data_root() == shared_data
    splits = create_datasets("cifar10-lt", imbalance=100)
    assert splits.info.train_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(splits.train) == 12406 and len(splits.test) == 10000 and splits.val is None
    assert splits.info.class_names == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]
    np.testing.assert_array_equal(np.bincount(splits.test.targets), [1000] * 10)
    assert {k: len(v) for k, v in splits.info.shot_groups.items()} == {"many": 8, "medium": 2, "few": 0}


@pytest.mark.shared
def test_shared_cifar10_jpeg_test_images_decode_in_label_order(shared_data):
    splits = create_datasets("cifar10-lt", root=shared_data)
    images = splits.test.images
    assert images.shape == (10000, 3, 32, 32) and images.dtype == torch.uint8
    for index in (0, 4321, 9999):
        label = splits.test.class_names[splits.test.targets[index]]
        path = shared_data / "cifar10-jpeg" / "test" / label / f"{index % 1000:04d}.jpg"
        expected = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).astype(int)
        assert np.abs(images[index].numpy().astype(int) - expected).max() <= 8  # libjpeg vs PIL IDCT rounding


@pytest.mark.slow
@pytest.mark.shared
def test_shared_cifar10_jpeg_train_decodes_once_then_loads_from_cache(shared_data):
    first = create_datasets("cifar10-lt", root=shared_data).train.images
    second = create_datasets("cifar10-lt", root=shared_data, imbalance=10).train
    assert first.shape == (12406, 3, 32, 32)
    assert len(second) == sum(int(5000 * 0.1 ** (i / 9)) for i in range(10))
    assert second.images.shape[1:] == (3, 32, 32)


@pytest.mark.shared
def test_places_lt_real_lists_shot_groups(shared_data):
    splits = create_datasets("places-lt", root=shared_data)
    groups = {k: len(v) for k, v in splits.info.shot_groups.items()}
    assert groups == {"many": 131, "medium": 163, "few": 71}
    assert splits.info.num_classes == 365 and sum(splits.info.train_counts) == 62500
    assert len(splits.val) == 7300 and len(splits.test) == 36500
    assert splits.info.class_names[0] == "airfield"
    assert isinstance(splits.train, ImageFiles)


@pytest.mark.shared
def test_imagenet_lt_without_train_list_says_where_it_looked(shared_data):
    with pytest.raises(LongtailError, match="ImageNet_LT_train.txt' not found.*list_root"):
        create_datasets("imagenet-lt", root=shared_data)


def test_list_dataset_streams_images_written_by_the_test(tmp_path):
    write_tree(tmp_path / "images", {"train": [6, 3, 1], "val": [2, 2, 2]}, size=12, suffix=".jpg")
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = {"train": [6, 3, 1], "val": [2, 2, 2]}
    for split, list_name in (("train", "Places_LT_train.txt"), ("val", "Places_LT_test.txt")):
        lines = [f"{split}/c{k}/{i:03d}.jpg {k}" for k, n in enumerate(rows[split]) for i in range(n)]
        (lists / list_name).write_text("\n".join(lines) + "\n")
    (lists / "Places_LT_val.txt").write_text("val/c0/000.jpg 0\nval/c2/001.jpg 2\n")
    splits = create_datasets("places-lt", root=tmp_path, list_root=lists, image_root=tmp_path / "images",
                             image_size=8)
    assert splits.info.train_counts == [6, 3, 1] and splits.info.class_names == ["0", "1", "2"]
    assert len(splits.val) == 2
    batches = list(create_loader(splits.train, 4, train=True, two_views=True, num_workers=0))
    assert [len(b) for b in batches] == [4, 4]
    assert batches[0].images.shape == (4, 3, 8, 8) and batches[0].strong.shape == (4, 3, 8, 8)
    test_batches = list(create_loader(splits.test, 4, train=False, num_workers=0))
    assert sum(len(b) for b in test_batches) == 6
    np.testing.assert_array_equal(np.concatenate([b.targets for b in test_batches]), [0, 0, 1, 1, 2, 2])


def test_unparsable_list_line_names_file_and_line(tmp_path):
    (tmp_path / "lt-splits").mkdir()
    (tmp_path / "lt-splits" / "Places_LT_train.txt").write_text("a/1.jpg 0\na/2.jpg zero\n")
    with pytest.raises(LongtailError, match=r"Places_LT_train.txt, line 2: expected"):
        create_datasets("places-lt", root=tmp_path)


def test_imagefolder_lt_in_memory_and_streamed(tmp_path):
    write_tree(tmp_path, {"train": [8, 8, 8, 8], "test": [2, 2, 2, 2]})
    memory = create_datasets("imagefolder-lt", root=tmp_path, imbalance=8, in_memory=True, selection="first")
    assert memory.info.train_counts == [8, 4, 2, 1] and memory.info.image_size == 8
    images = memory.train.images
    assert images.shape == (15, 3, 8, 8)
    expected_grey = [10 * k + i for k, n in enumerate([8, 4, 2, 1]) for i in range(n)]
    np.testing.assert_array_equal(images[:, 0, 0, 0].numpy(), expected_grey)
    streamed = create_datasets("imagefolder-lt", root=tmp_path, imbalance=8, image_size=8, in_memory=False)
    assert isinstance(streamed.train, ImageFiles) and streamed.info.train_counts == [8, 4, 2, 1]


def test_imagefolder_lt_keeps_small_images_in_memory_at_their_size_and_streams_large_ones(tmp_path):
    write_tree(tmp_path / "small", {"train": [3, 2], "test": [1, 1]}, size=28)
    small = create_datasets("imagefolder-lt", root=tmp_path / "small", imbalance=1)
    assert isinstance(small.train, InMemoryImages) and isinstance(small.test, InMemoryImages)
    assert small.info.image_size == 28 and small.train.images.shape[1:] == (3, 28, 28)
    write_tree(tmp_path / "large", {"train": [2, 2], "test": [1, 1]}, size=80)
    large = create_datasets("imagefolder-lt", root=tmp_path / "large", imbalance=1)
    assert isinstance(large.train, ImageFiles) and isinstance(large.test, ImageFiles)
    assert large.info.image_size == 224
    shrunk = create_datasets("imagefolder-lt", root=tmp_path / "large", imbalance=1, image_size=32)
    assert isinstance(shrunk.train, InMemoryImages) and shrunk.train.images.shape[1:] == (3, 32, 32)


def test_digits_lt_is_deterministic_and_long_tailed():
    splits = create_datasets("digits-lt", imbalance=10)
    info = splits.info
    assert info.train_counts[0] == 124 and info.train_counts[-1] == 12 and len(splits.test) == 500
    assert splits.train.images.shape[1:] == (3, 32, 32)
    assert info.shot_thresholds == pytest.approx((24.8, 4.96))
    again = create_datasets("digits-lt", imbalance=10, seed=5)
    np.testing.assert_array_equal(again.test.source_indices, splits.test.source_indices)
    assert create_datasets("digits-lt", image_size=8).train.images.shape[1:] == (3, 8, 8)


def test_validation_split_rule():
    splits = create_datasets("digits-lt", imbalance=100, val_per_class=10)
    counts = np.array(splits.info.train_counts)
    val_counts = np.bincount(splits.val.targets, minlength=10)
    pool = np.bincount(load_digits().target) - 50  # 50 test images per class
    long_tailed = np.array(create_datasets("digits-lt", imbalance=100).info.train_counts)
    spare = pool - long_tailed
    assert (val_counts == 10).all()
    # validation takes spare images first, then (the head classes) long-tailed training images
    np.testing.assert_array_equal(counts, long_tailed - np.maximum(10 - spare, 0))
    assert counts[0] < long_tailed[0] and (counts[2:] == long_tailed[2:]).all()
    assert not np.intersect1d(splits.val.source_indices, splits.train.source_indices).size
    assert (counts + val_counts <= pool).all()
    same = create_datasets("digits-lt", imbalance=100, val_per_class=10)
    np.testing.assert_array_equal(same.val.source_indices, splits.val.source_indices)


def test_validation_never_empties_a_class(tmp_path):
    (tmp_path / "lt-splits").mkdir()
    lines = [f"x/{k}_{i}.jpg {k}" for k, n in enumerate([40, 3, 1]) for i in range(n)]
    for name in ("iNaturalist18_train.txt", "iNaturalist18_val.txt"):
        (tmp_path / "lt-splits" / name).write_text("\n".join(lines))
    splits = create_datasets("inat2018", root=tmp_path, val_per_class=5)
    assert splits.info.train_counts == [35, 2, 1]
    np.testing.assert_array_equal(np.bincount(splits.val.targets), [5, 1])


def test_unknown_dataset_suggests_closest():
    with pytest.raises(LongtailError, match="Did you mean 'cifar100-lt'"):
        create_datasets("cifar100lt")


def test_missing_data_root_says_how_to_set_it(tmp_path):
    with pytest.raises(LongtailError, match="does not exist.*LONGTAIL_DATA"):
        create_datasets("imagefolder-lt", root=tmp_path / "absent")


def test_imbalance_below_one_and_unknown_option():
    with pytest.raises(LongtailError, match="Imbalance factor must be >= 1"):
        create_datasets("digits-lt", imbalance=0.1)
    with pytest.raises(LongtailError, match="no option 'colour'.*image_size"):
        create_datasets("digits-lt", colour=True)


def test_corrupt_image_is_named_in_memory(tmp_path):
    write_tree(tmp_path, {"train": [2, 2], "test": [1, 1]}, suffix=".jpg")
    broken = tmp_path / "train" / "c1" / "001.jpg"
    broken.write_bytes(b"not a jpeg at all")
    splits = create_datasets("imagefolder-lt", root=tmp_path, imbalance=1, in_memory=True)
    with pytest.raises(LongtailError, match=f"Cannot read image '{broken}'"):
        splits.train.images


def test_corrupt_image_is_named_from_a_worker(tmp_path):
    write_tree(tmp_path, {"train": [2, 2], "test": [1, 1]}, suffix=".jpg")
    broken = tmp_path / "train" / "c0" / "000.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    splits = create_datasets("imagefolder-lt", root=tmp_path, imbalance=1, image_size=8, in_memory=False)
    loader = create_loader(splits.train, 4, train=False, num_workers=1)
    with pytest.raises(LongtailError) as caught:
        list(loader)
    assert str(caught.value).startswith(f"Cannot read image '{broken}'")
    assert "Traceback" not in str(caught.value)


def test_missing_image_root_is_reported_when_loading(tmp_path):
    (tmp_path / "lt-splits").mkdir()
    for name in ("iNaturalist18_train.txt", "iNaturalist18_val.txt"):
        (tmp_path / "lt-splits" / name).write_text("x/a.jpg 0\n")
    splits = create_datasets("inat2018", root=tmp_path)
    with pytest.raises(LongtailError, match="Image root .*inat2018' does not exist; give image_root"):
        create_loader(splits.train, 2, train=True)

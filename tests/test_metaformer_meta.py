"""Meta-information for MetaFormer: spatio-temporal encoding, iNaturalist JSON reader, side files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from longtail.data.meta import (
    SPATIOTEMPORAL,
    encode_spatiotemporal,
    parse_date,
    read_inaturalist,
    read_meta_file,
)
from longtail.errors import LongtailError


def hand_encoding(month, hour, lat, lon):
    phi, lam = math.radians(lat), math.radians(lon)
    return [
        math.sin(2 * math.pi * month / 12), math.cos(2 * math.pi * month / 12),
        math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24),
        math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi),
    ]


def test_spatiotemporal_encoding_matches_hand_computation():
    encoded = encode_spatiotemporal([7, 12], [15, 0], [37.77, -33.9], [-122.42, 151.2])
    assert encoded.shape == (2, 7) and encoded.dtype == np.float32
    np.testing.assert_allclose(encoded[0], hand_encoding(7, 15, 37.77, -122.42), atol=1e-6)
    np.testing.assert_allclose(encoded[1], hand_encoding(12, 0, -33.9, 151.2), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(encoded[:, 4:], axis=1), 1.0, atol=1e-6)


def test_missing_parts_are_zero_independently():
    nan = float("nan")
    encoded = encode_spatiotemporal([3, nan, 13, 5], [nan, 6, 1, 25], [10, 10, 91, 0], [nan, 20, 0, 0])
    np.testing.assert_allclose(encoded[0], hand_encoding(3, 6, 0, 0)[:2] + [0.0] * 5, atol=1e-6)
    np.testing.assert_allclose(encoded[1], [0, 0] + hand_encoding(1, 6, 10, 20)[2:], atol=1e-6)
    np.testing.assert_allclose(encoded[2], [0, 0] + hand_encoding(1, 1, 0, 0)[2:4] + [0, 0, 0], atol=1e-6)
    # latitude 0, longitude 0 is a real place (the official reader would call it missing)
    np.testing.assert_allclose(encoded[3], hand_encoding(5, 0, 0, 0)[:2] + [0, 0, 1, 0, 0], atol=1e-6)


def test_parse_date_formats():
    assert parse_date("2018-07-24 15:30:00+00:00") == (7.0, 15.0)
    assert parse_date("2021-04-23T09:05:00") == (4.0, 9.0)
    month, hour = parse_date("2014-06-19")
    assert month == 6.0 and math.isnan(hour)
    for bad in ("June 2014", "", None, 20140619):
        assert all(math.isnan(v) for v in parse_date(bad))


def test_inaturalist_2021_style_json(tmp_path):
    data = {
        "images": [
            {"id": 10, "file_name": "train/a.jpg", "date": "2019-03-02 18:00:00+00:00",
             "latitude": 45.0, "longitude": -75.0},
            {"id": 11, "file_name": "train/b.jpg", "date": None, "latitude": None, "longitude": 12.5},
            {"id": 12, "file_name": "train/c.jpg", "date": "not a date", "latitude": "north", "longitude": 3},
            {"id": 13, "file_name": "train/d.jpg"},
        ],
        "annotations": [{"id": 0, "image_id": 11, "category_id": 4}, {"id": 1, "image_id": 10, "category_id": 7},
                        {"id": 2, "image_id": 12, "category_id": 0}],
        "categories": [{"id": i, "name": str(i)} for i in range(8)],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    records = read_inaturalist(path)
    assert records.file_names == ["train/a.jpg", "train/b.jpg", "train/c.jpg", "train/d.jpg"]
    assert records.image_ids.tolist() == [10, 11, 12, 13]
    assert records.category_ids.tolist() == [7, 4, 0, -1]
    meta = records.meta()[SPATIOTEMPORAL]
    assert meta.shape == (4, 7)
    np.testing.assert_allclose(meta[0], hand_encoding(3, 18, 45.0, -75.0), atol=1e-6)
    assert not meta[1:].any()


def test_inaturalist_2018_style_with_locations_file(tmp_path):
    annotations = {
        "images": [{"id": 1, "file_name": "train_val2018/x.jpg"}, {"id": 2, "file_name": "train_val2018/y.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3}, {"id": 2, "image_id": 2, "category_id": 5}],
    }
    locations = [
        {"id": 2, "lat": -10.5, "lon": 140.25, "date": "2016-11-05 07:00:00+00:00", "loc_uncert": 30},
        {"id": 1, "lat": None, "lon": None, "date": "2015-01-31", "loc_uncert": None},
    ]
    (tmp_path / "train2018.json").write_text(json.dumps(annotations))
    (tmp_path / "train2018_locations.json").write_text(json.dumps(locations))
    records = read_inaturalist(tmp_path / "train2018.json", tmp_path / "train2018_locations.json")
    assert records.category_ids.tolist() == [3, 5]
    np.testing.assert_allclose(records.spatiotemporal[0], hand_encoding(1, 0, 0, 0)[:2] + [0] * 5, atol=1e-6)
    np.testing.assert_allclose(records.spatiotemporal[1], hand_encoding(11, 7, -10.5, 140.25), atol=1e-6)


def test_inaturalist_reader_errors(tmp_path):
    with pytest.raises(LongtailError, match="does not exist"):
        read_inaturalist(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LongtailError, match="not valid JSON"):
        read_inaturalist(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(LongtailError, match="images"):
        read_inaturalist(tmp_path / "other.json")


def test_csv_side_file_groups_and_alignment(tmp_path):
    (tmp_path / "meta.csv").write_text(
        "path,date,latitude,longitude,wing,beak,colour:red\n"
        "birds/a.jpg,2020-05-01 06:00,10,20,1,0,0.5\n"
        "birds/b.jpg,,,,x,1,\n"
    )
    table = read_meta_file(tmp_path / "meta.csv")
    assert sorted(table.groups) == ["attributes", "colour", SPATIOTEMPORAL]
    np.testing.assert_array_equal(table.groups["attributes"], [[1, 0], [0, 1]])
    np.testing.assert_array_equal(table.groups["colour"], [[0.5], [0]])
    root = tmp_path / "images"
    with pytest.warns(UserWarning, match="1 of 3 images"):
        aligned = table.align([root / "birds/b.jpg", root / "birds/new.jpg", root / "birds/a.jpg"], root=root)
    np.testing.assert_allclose(aligned[SPATIOTEMPORAL][2], hand_encoding(5, 6, 10, 20), atol=1e-6)
    assert not aligned[SPATIOTEMPORAL][:2].any()
    np.testing.assert_array_equal(aligned["attributes"], [[0, 1], [0, 0], [1, 0]])
    with pytest.raises(LongtailError, match="None of the 1 images"):
        table.align(["elsewhere/a.jpg"])


def test_json_side_file_with_vectors_and_sequences(tmp_path):
    records = {
        "a.jpg": {"month": 2, "lat": 0.0, "lon": 90.0, "attributes": [1, 0, 1], "text": [[0.5, 1], [2, 3]],
                  "note": "blurry"},
        "b.jpg": {"attributes": [1, 0], "text": "missing"},
        "c.jpg": {"attributes": [0, float("nan"), 1]},
    }
    (tmp_path / "meta.json").write_text(json.dumps(records))
    table = read_meta_file(tmp_path / "meta.json")
    assert table.paths == ["a.jpg", "b.jpg", "c.jpg"]
    assert sorted(table.groups) == ["attributes", SPATIOTEMPORAL, "text"]
    np.testing.assert_array_equal(table.groups["attributes"], [[1, 0, 1], [0, 0, 0], [0, 0, 1]])
    assert table.groups["text"].shape == (3, 2, 2) and not table.groups["text"][1:].any()
    np.testing.assert_allclose(table.groups[SPATIOTEMPORAL][0], hand_encoding(2, 6, 0, 90)[:2] + [0, 0, 0, 1, 0],
                               atol=1e-6)


def test_npz_side_file(tmp_path):
    np.savez(tmp_path / "meta.npz", paths=np.array(["x/1.jpg", "x/2.jpg"]), text=np.ones((2, 4, 3)))
    table = read_meta_file(tmp_path / "meta.npz")
    assert table.align(["x/2.jpg"])["text"].shape == (1, 4, 3)
    np.savez(tmp_path / "bad.npz", paths=np.array(["x/1.jpg"]), text=np.ones((2, 3)))
    with pytest.raises(LongtailError, match="one row per path"):
        read_meta_file(tmp_path / "bad.npz")
    with pytest.raises(LongtailError, match=".csv, .json or .npz"):
        read_meta_file(tmp_path / "meta.txt")

"""Sources: Kaggle styles.csv, manifest, class-per-folder, the demo set, and what gets skipped."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data import load_dataset, load_index, write_skipped
from imgcls.errors import UserError

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"


def _jpg(path, color=(200, 10, 10), size=(6, 8)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)


def _kaggle(tmp_path):
    rows = [
        "1,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
        # 11 fields: one unquoted comma in productDisplayName
        "2,Men,Personal Care,Fragrance,Perfume,Blue,Spring,2017,Casual,Boss Men Perfume, Balm Set",
        # 12 fields: two unquoted commas
        "3,Men,Footwear,Shoes,Casual Shoes,White,Winter,2012,Casual,Newfeel White, Blue, Orange Shoes",
        "4,Men,Apparel,Topwear,Tshirts,White,Summer,2011,Casual,Plain Tee",
        "5,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,No image for this one",
        "6,Men,Apparel",  # too short to have a label
    ]
    (tmp_path / "styles.csv").write_text(HEADER + "\n".join(rows) + "\n")
    for image_id in (1, 2, 3, 4):
        _jpg(str(tmp_path / "images" / f"{image_id}.jpg"))
    return tmp_path


def test_kaggle_layout_keeps_rows_with_extra_commas_and_skips_missing_images(tmp_path):
    index = load_index(str(_kaggle(tmp_path)), log=lambda *_: None)
    by_file = {os.path.basename(p): index.class_names[c] for p, c in zip(index.paths, index.labels)}
    assert by_file == {"1.jpg": "Topwear", "2.jpg": "Fragrance", "3.jpg": "Shoes", "4.jpg": "Topwear"}
    assert index.class_names == ["Fragrance", "Shoes", "Topwear"]
    assert index.labels.dtype == np.int64
    reasons = dict(index.skipped)
    assert len(index.skipped) == 2
    assert reasons["styles.csv row 6 (images/5.jpg)"] == "no image file"
    assert "only 3 fields" in reasons["styles.csv row 7"]


def test_kaggle_other_label_column_and_unknown_column(tmp_path):
    root = str(_kaggle(tmp_path))
    index = load_index(root, label_col="articleType", log=lambda *_: None)
    assert sorted(index.class_names) == ["Casual Shoes", "Perfume", "Shirts", "Tshirts"]
    with pytest.raises(UserError, match="no column 'colour'"):
        load_index(root, label_col="colour", log=lambda *_: None)


def test_manifest_relative_and_absolute_paths(tmp_path):
    _jpg(str(tmp_path / "img" / "a.jpg"))
    _jpg(str(tmp_path / "img" / "b.png"))
    absolute = str(tmp_path / "elsewhere" / "c.jpg")
    _jpg(absolute)
    manifest = tmp_path / "lists" / "train.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"path,label\n../img/a.jpg,cat\n../img/b.png,dog\n{absolute},dog\n../img/zzz.jpg,cat\n")
    index = load_index(str(manifest), log=lambda *_: None)
    assert [os.path.basename(p) for p in index.paths] == ["a.jpg", "b.png", "c.jpg"]
    assert all(os.path.isfile(p) for p in index.paths)
    assert index.class_names == ["cat", "dog"] and index.labels.tolist() == [0, 1, 1]
    assert index.skipped == [("train.csv row 5 (../img/zzz.jpg)", "no image file")]


def test_manifest_without_the_columns_is_a_user_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,class\na.jpg,cat\n")
    with pytest.raises(UserError, match="m.csv: needs columns 'path' and 'label'"):
        load_index(str(manifest))


def test_class_per_folder(tmp_path):
    for cls, n in (("boots", 2), ("hats", 3)):
        for i in range(n):
            _jpg(str(tmp_path / cls / f"{i}.jpg"))
    (tmp_path / "hats" / "notes.txt").write_text("not an image")
    index = load_index(str(tmp_path), log=lambda *_: None)
    assert index.class_names == ["boots", "hats"]
    assert index.labels.tolist() == [0, 0, 1, 1, 1]
    assert [p for p, _ in index.skipped] == [str(tmp_path / "hats" / "notes.txt")]


def test_missing_data_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        load_index(str(tmp_path / "nope"))


def test_fewer_than_two_classes_is_a_user_error(tmp_path):
    for i in range(3):
        _jpg(str(tmp_path / "only" / f"{i}.jpg"))
    with pytest.raises(UserError, match="only 1 class"):
        load_dataset(str(tmp_path), log=lambda *_: None)


def test_demo_set_is_long_tailed_digits_with_the_documented_profile():
    from sklearn.datasets import load_digits

    ds = load_dataset(None)
    target = load_digits().target
    n_max = np.bincount(target).min()
    expected = [max(1, round(n_max * 100 ** (-c / 9))) for c in range(10)]
    assert torch.bincount(ds.labels).tolist() == expected
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (sum(expected), 3, 32, 32)
    # paths name the digit and the index into load_digits, and that index has that digit
    for path, label in zip(ds.paths[:50], ds.labels[:50].tolist()):
        _, name = path.split("/")
        _, digit, number = name.split("_")
        assert int(digit) == label == target[int(number)]
    assert ds.class_names[3] == "digit_3" and ds.skipped == []
    # deterministic: a second call gives the same images; another storage size resizes them
    assert torch.equal(load_dataset(None).images, ds.images)
    small = load_dataset(None, size=(16, 16))
    assert small.images.shape == (len(ds.paths), 3, 16, 16) and small.images.dtype == torch.uint8
    assert torch.equal(small.labels, ds.labels)


def test_undecodable_images_are_dropped_counted_and_written(tmp_path):
    for i in range(2):
        _jpg(str(tmp_path / "a" / f"{i}.jpg"))
        _jpg(str(tmp_path / "b" / f"{i}.jpg"), color=(0, 0, 255))
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    logged = []
    ds = load_dataset(str(tmp_path), log=logged.append)
    assert ds.images.shape[0] == len(ds.paths) == len(ds.labels) == 4
    assert [os.path.basename(p) for p, _ in ds.skipped] == ["empty.jpg"]
    assert any("skipped 1 undecodable" in line and "empty.jpg" in line for line in logged)
    # the kept images are the right ones, in order, with their labels
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images[3, 2].float().mean() > 200  # a blue image
    write_skipped(ds.skipped, str(tmp_path / "run" / "skipped.json"))
    record = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert record["count"] == 1 and record["skipped"][0]["item"].endswith("empty.jpg")


def test_a_class_whose_images_are_all_undecodable_disappears(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            _jpg(str(tmp_path / cls / f"{i}.jpg"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_bytes(b"not a jpeg")
    ds = load_dataset(str(tmp_path), log=lambda *_: None)
    assert ds.class_names == ["a", "b"] and ds.labels.tolist() == [0, 0, 1, 1]


def test_paths_are_absolute_however_the_data_path_is_spelled(tmp_path, monkeypatch):
    for cls in ("a", "b"):
        _jpg(str(tmp_path / "set" / cls / "0.jpg"))
    monkeypatch.chdir(tmp_path)
    relative = load_index("set", log=lambda *_: None)
    spelled = load_index("./set/../set/", log=lambda *_: None)
    absolute = load_index(str(tmp_path / "set"), log=lambda *_: None)
    assert relative.paths == spelled.paths == absolute.paths
    assert all(os.path.isabs(p) for p in relative.paths)

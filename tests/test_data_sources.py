"""Sources: Kaggle styles.csv, manifest, class-per-folder, the demo set, and what gets skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
import predict as predict_script
import train as train_script
from imgcls import checkpoint
from imgcls.data import load_dataset, load_index, write_skipped
from imgcls.data.splits import load_split
from imgcls.errors import UserError
from tests.helpers import (
    COLOURS,
    ENV,
    TINY,
    TINY_B0,
    assert_one_line_error,
    cli,
    needs_non_root,
    skipped_entries,
    write_folder_dataset,
    write_image,
    write_kaggle,
)

QUIET = dict(log=lambda *a, **k: None)

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


def test_duplicate_ids_keep_the_first_are_listed_and_never_cross_the_split(tmp_path, capsys):
    # id 1 is a shirt; a second row calls it a shoe (conflict), id 2 repeats with the same label.
    data = write_kaggle(tmp_path / "k", extra_rows=["1,Men,shoes,thing 1 again", "2,Men,shirts,thing 2 again"])
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "runs", "--cache-dir", "none",
                         "--label-col", "subCategory", *TINY, capsys=capsys)
    assert code == 0, err
    summary = [line for line in out.splitlines() if "skipped 2 item(s)" in line]
    assert len(summary) == 1 and "duplicate id with a different label" in summary[0], out
    entries = skipped_entries(tmp_path / "runs" / "v1" / "fold0" / "skipped.json")
    reasons = {e["item"].split(" (")[0]: e["reason"] for e in entries}
    assert reasons == {"styles.csv row 26": "duplicate id with a different label (kept the first)",
                       "styles.csv row 27": "duplicate of an earlier row (kept the first)"}
    assert "first at row 2 as 'shirts', here 'shoes'" in entries[0]["item"]

    index = load_index(str(data), "subCategory", **QUIET)
    assert len(index.paths) == len(set(index.paths)) == 24
    first = index.paths.index(str(data / "images" / "1.jpg"))
    assert index.class_names[index.labels[first]] == "shirts"  # the first row's label
    split = load_split(str(tmp_path / "runs" / "v1" / "split.json"), index.paths)
    test = {index.paths[i] for i in split["test"]}
    for fold in split["folds"]:
        train, val = ({index.paths[i] for i in fold[part]} for part in ("train", "val"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train | val | test) == 24


def test_duplicate_paths_in_a_manifest_keep_the_first(tmp_path):
    for name in COLOURS:
        for i in range(4):
            write_image(tmp_path / name / f"{i}.png", COLOURS[name], seed=i)
    lines = ["path,label"] + [f"{n}/{i}.png,{n}" for n in COLOURS for i in range(4)]
    lines += ["./shirts/0.png,shoes", str(tmp_path / "shirts" / "1.png") + ",shirts"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    index = load_index(str(tmp_path / "m.csv"), **QUIET)
    assert len(index.paths) == len(set(index.paths)) == 12
    assert [why for _, why in index.skipped] == ["duplicate id with a different label (kept the first)",
                                                 "duplicate of an earlier row (kept the first)"]
    assert index.skipped[0][0].startswith("m.csv row 14 (./shirts/0.png), first at row 2")


@needs_non_root
def test_unreadable_class_folder_is_listed_not_dropped_silently(tmp_path):
    data = write_folder_dataset(tmp_path / "d")
    (data / "shoes").chmod(0)
    try:
        index = load_index(str(data), **QUIET)
    finally:
        (data / "shoes").chmod(0o755)
    assert "shoes" not in index.class_names
    assert (str(data / "shoes"), "unreadable folder: Permission denied") in index.skipped


@needs_non_root
def test_unreadable_image_file_is_listed_like_an_undecodable_one(tmp_path):
    data = write_folder_dataset(tmp_path / "d")
    bad = data / "shoes" / "shoes_000.png"
    bad.chmod(0)
    ds = load_dataset(str(data), cache_dir=None, workers=1, **QUIET)
    assert [(item, why.split(":")[0]) for item, why in ds.skipped] == [(str(bad), "undecodable")]
    assert "Permission denied" in ds.skipped[0][1]


def test_walk_errors_are_reported_through_onerror(tmp_path, monkeypatch):
    """Runs as root too: a folder that vanishes between listing and walking raises inside os.walk."""
    data = write_folder_dataset(tmp_path / "d")
    real_walk = os.walk

    def walk_with_error(top, onerror=None, **kw):
        if top.endswith("shoes"):
            onerror(PermissionError(13, "Permission denied", top))
            return iter(())
        return real_walk(top, onerror=onerror, **kw)

    monkeypatch.setattr(os, "walk", walk_with_error)
    index = load_index(str(data), **QUIET)
    assert (str(data / "shoes"), "unreadable folder: Permission denied") in index.skipped


@needs_non_root
def test_unreadable_styles_csv_is_one_line(tmp_path, capsys):
    data = write_kaggle(tmp_path / "k")
    (data / "styles.csv").chmod(0)
    code, _, err = cli(train_script, "--data", data, "--out", tmp_path / "r", *TINY, capsys=capsys)
    assert_one_line_error(code, err, "styles.csv", "cannot read")


def test_non_utf8_file_name_trains_and_predicts(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "d", counts=(10, 8, 6))
    odd = os.fsencode(data / "shoes") + b"/caf\xe9-\xff.png"  # Latin-1 bytes: not valid UTF-8
    os.rename(os.fsencode(data / "shoes" / "shoes_000.png"), odd)
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "r", "--cache-dir", tmp_path / "c",
                         *TINY, capsys=capsys)
    assert code == 0, err
    index = load_index(str(data), **QUIET)
    assert os.fsdecode(odd) in index.paths and not index.skipped
    code, out, err = cli(predict_script, "--run", tmp_path / "r" / "v1", "--images", os.fsdecode(odd),
                         "--device", "cpu", "--out", tmp_path / "p" / "predictions.csv", capsys=capsys)
    assert code == 0, err
    rows = (tmp_path / "p" / "predictions.csv").read_bytes().splitlines()
    assert len(rows) == 2 and odd in rows[1]  # the path as its bytes on disk


@pytest.mark.slow  # a subprocess or a large file
def test_fifo_is_skipped_before_any_open(tmp_path):
    data = write_folder_dataset(tmp_path / "d", counts=(6, 6, 6))
    os.mkfifo(data / "shoes" / "x.jpg")
    os.mkfifo(tmp_path / "y.jpg")
    script = (f"from imgcls.data import load_dataset\n"
              f"from imgcls.data.cache import decode_images\n"
              f"ds = load_dataset({str(data)!r}, cache_dir=None, workers=1, log=lambda *a: None)\n"
              f"print(repr(ds.skipped))\n"
              f"_, ok, why = decode_images([{str(tmp_path / 'y.jpg')!r}], (8, 8), None, 1, log=lambda *a: None)\n"
              f"print(bool(ok[0]), why[0])\n")
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed, decoded = proc.stdout.strip().splitlines()
    assert eval(listed) == [(str(data / "shoes" / "x.jpg"),
                             "not a regular file (a folder, FIFO, device or socket): not opened")]
    assert decoded == "False not a regular file (a folder, FIFO, device or socket): not opened"


def test_styles_csv_with_a_bom_is_read(tmp_path):
    data = write_kaggle(tmp_path / "k", per_class=3, bom=True)
    index = load_index(str(data), "subCategory", **QUIET)
    assert len(index.paths) == 9 and index.class_names == sorted(COLOURS)


def test_manifest_with_a_bom_is_read_and_latin1_is_one_line_naming_the_row(tmp_path, capsys):
    for i, name in enumerate(COLOURS):
        for j in range(3):
            write_image(tmp_path / f"{name}{j}.png", COLOURS[name], seed=j)
    body = "path,label\n" + "".join(f"{n}{j}.png,{n}\n" for n in COLOURS for j in range(3))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert len(load_index(str(tmp_path / "bom.csv"), **QUIET).paths) == 9
    (tmp_path / "latin1.csv").write_bytes((body + "shirts0.png,chemis\xe9\n").encode("latin-1"))
    code, _, err = cli(train_script, "--data", tmp_path / "latin1.csv", "--out", tmp_path / "r", *TINY,
                       capsys=capsys)
    assert_one_line_error(code, err, str(tmp_path / "latin1.csv"), "row 11 is not UTF-8", "0xe9")


def test_an_unbalanced_quote_in_styles_csv_is_refused_with_its_row_and_span(tmp_path, capsys):
    data = write_kaggle(tmp_path / "data", per_class=6)
    lines = (data / "styles.csv").read_text().splitlines()
    lines[4] = lines[4].replace("thing", '"thing')  # row 5: a quote opened and never closed
    (data / "styles.csv").write_text("\n".join(lines) + "\n")
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "runs", *TINY_B0,
                       capsys=capsys)
    # without the check, rows 6..19 became one field and the run trained on 4 of the 18 images
    assert_one_line_error(code, err, "styles.csv: row 5 opens a quote", "15 lines were read as one row")
    assert not (tmp_path / "runs").exists()


def test_an_unbalanced_quote_in_a_manifest_is_refused_the_same_way(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "list.csv").write_text('path,label\na.png,x\n"b.png,y\nc.png,z\n')
    with pytest.raises(imgcls.UserError, match=r"row 3 opens a quote .* 2 lines were read as one row"):
        load_index(str(tmp_path / "list.csv"))


def test_a_csv_field_longer_than_the_csv_modules_limit_is_read(tmp_path):
    long_name = "x" * 200_000  # the csv module's default limit is 131,072 characters per field
    data = write_kaggle(tmp_path / "data", per_class=4, extra_rows=[f"13,Men,shirts,{long_name}"])
    write_image(data / "images" / "13.jpg", seed=13)
    index = load_index(str(data), log=lambda *a: None)
    assert len(index.paths) == 13 and not index.skipped


def test_folder_layout_lists_top_level_images_and_reads_a_linked_class_folder_once(tmp_path):
    data = write_folder_dataset(tmp_path / "data", counts=(5, 4, 3))
    write_image(data / "loose.png")                        # no class folder: no label
    (data / "tops").symlink_to(data / "shirts", target_is_directory=True)  # the shirts again, as "tops"
    (data / "watches" / "again.png").symlink_to(data / "shoes" / "shoes_000.png")  # one file, two labels
    index = load_index(str(data), log=lambda *a: None)
    assert index.class_names == ["shirts", "shoes", "watches"] and len(index.paths) == 12
    reasons = dict(index.skipped)
    assert reasons[str(data / "loose.png")] == "an image at the top level, not in a class folder: no label, not used"
    assert "the same folder as class 'shirts'" in reasons[str(data / "tops")]
    assert "the same file as one in class 'shoes'" in reasons[str(data / "watches" / "again.png")]


def test_a_class_folder_whose_name_is_not_utf8_trains_and_plots(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data", counts=(8, 6, 6))
    os.rename(os.fsencode(data / "watches"), os.fsencode(data) + b"/caf\xe9")  # latin-1 bytes, not UTF-8
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "runs", *TINY_B0,
                       capsys=capsys)
    assert code == 0, err
    fold = tmp_path / "runs" / "v1" / "fold0"
    assert (fold / "confusion.png").stat().st_size > 0 and (fold / "metrics.json").is_file()
    assert os.fsdecode(b"caf\xe9") in checkpoint.read(fold / "shipped.pt").class_names

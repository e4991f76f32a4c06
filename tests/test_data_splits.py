"""Splits: stratified holdout test, k-fold / holdout validation, tiny classes, save/load guard."""

from __future__ import annotations

import numpy as np
import pytest

import train as train_script
from imgcls.data.splits import auto_num_folds, load_split, make_split, save_split
from imgcls.errors import UserError
from tests.helpers import (
    assert_one_line_error,
    cli,
)

TINY = ["--version", "v1", "--model", "tiny_efficientnet", "--pretrained", "none", "--img-size", "32", "--epochs", "1",
        "--batch-size", "8", "--workers", "1", "--eval-batch-size", "64", "--device", "cpu"]

# a long tail: 60, 30, 12, 5, 3, 2, 1 images
COUNTS = [60, 30, 12, 5, 3, 2, 1]
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)
np.random.default_rng(1).shuffle(LABELS)


@pytest.mark.parametrize("counts,k", [([50, 2, 9], 2), ([50, 1], 2), ([50, 3], 3), ([4, 10], 3), ([100, 7], 3),
                                      ({"a": 5, "b": 0, "c": 3}, 3)])
def test_auto_num_folds_follows_the_v3_rule(counts, k):
    assert auto_num_folds(counts) == k


def _check_partition(split, n):
    test = set(split["test"])
    for fold in split["folds"]:
        train, val = set(fold["train"]), set(fold["val"])
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(range(n))


def test_holdout_split_is_stratified_disjoint_and_deterministic():
    split = make_split(LABELS, test_frac=0.2, num_folds=1, val_frac=0.25, seed=3)
    _check_partition(split, len(LABELS))
    test_counts = np.bincount(LABELS[split["test"]], minlength=len(COUNTS))
    assert test_counts.tolist() == [12, 6, 2, 1, 1, 0, 0]  # round(n * 0.2), never a whole class
    assert split == make_split(LABELS, test_frac=0.2, num_folds=1, val_frac=0.25, seed=3)
    assert split["test"] != make_split(LABELS, test_frac=0.2, num_folds=1, val_frac=0.25, seed=4)["test"]
    # val: round(rest * 0.25) per class; rest = 48, 24, 10, 4, 2, 2, 1
    val_counts = np.bincount(LABELS[split["folds"][0]["val"]], minlength=len(COUNTS))
    assert val_counts.tolist() == [12, 6, 2, 1, 0, 0, 0]  # 2 * 0.25 rounds to 0: stays in train
    assert split["kept_in_train"] == {4: 2, 5: 2, 6: 1}
    assert any("class 6 (n=1)" in note for note in split["notes"])


def test_kfold_every_big_class_in_every_fold_and_tiny_classes_in_every_train():
    k = 3
    split = make_split(LABELS, test_frac=0.2, num_folds=k, seed=0)
    _check_partition(split, len(LABELS))
    assert len(split["folds"]) == k
    rest = sorted(set(range(len(LABELS))) - set(split["test"]))
    rest_counts = np.bincount(LABELS[rest], minlength=len(COUNTS))
    vals = [set(f["val"]) for f in split["folds"]]
    # validation sets are disjoint across folds and cover every foldable item exactly once
    assert sum(len(v) for v in vals) == len(set().union(*vals))
    for c, n in enumerate(rest_counts):
        members = {i for i in rest if LABELS[i] == c}
        if n >= k:
            assert all(members & v for v in vals), f"class {c} (n={n}) missing from a fold"
            assert members == set().union(*vals) & members
        else:
            assert split["kept_in_train"][c] == n
            assert all(members <= set(f["train"]) for f in split["folds"])
    assert split == make_split(LABELS, test_frac=0.2, num_folds=k, seed=0)


def test_single_image_class_never_breaks_anything():
    labels = np.array([0] * 10 + [1] * 10 + [2])
    for folds in (1, 2, 3):
        split = make_split(labels, test_frac=0.2, num_folds=folds, seed=0)
        _check_partition(split, len(labels))
        assert 20 not in split["test"]
        assert all(20 in f["train"] for f in split["folds"])
        assert split["kept_in_train"][2] == 1


def test_no_test_split():
    split = make_split(LABELS, test_frac=0.0, num_folds=2, seed=0)
    assert split["test"] == []
    _check_partition(split, len(LABELS))


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="--test-frac"):
        make_split(LABELS, test_frac=1.0)
    with pytest.raises(UserError, match="--folds"):
        make_split(LABELS, num_folds=0)
    with pytest.raises(UserError, match="no class has 5 images"):
        make_split(np.array([0, 0, 1, 1]), test_frac=0.0, num_folds=5)


def test_save_and_load_roundtrip_and_guard_against_other_data(tmp_path):
    paths = [f"img/{i}.jpg" for i in range(len(LABELS))]
    split = make_split(LABELS, num_folds=3, seed=0)
    target = str(tmp_path / "run" / "split.json")
    save_split(target, split, paths)
    assert load_split(target, paths) == split
    with pytest.raises(UserError, match="different data set"):
        load_split(target, paths[:-1])
    with pytest.raises(UserError, match="different data set"):
        load_split(target, paths[1:] + paths[:1])
    with pytest.raises(UserError, match="cannot read"):
        load_split(str(tmp_path / "missing.json"), paths)


def test_a_moved_data_set_keeps_its_split(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 1])
    split = make_split(labels, test_frac=0.0, num_folds=2, seed=0)
    old = [f"/data/v1/set/{c}/{i}.jpg" for c, i in zip(labels, range(6))]
    new = [p.replace("/data/v1/", "/mnt/copy/") for p in old]
    save_split(str(tmp_path / "split.json"), split, old)
    assert load_split(str(tmp_path / "split.json"), new) == split
    renamed = new[:5] + ["/mnt/copy/set/1/other.jpg"]
    with pytest.raises(UserError, match="different data set"):
        load_split(str(tmp_path / "split.json"), renamed)


def test_an_empty_validation_split_is_refused_before_anything_is_written(tmp_path, capsys):
    code, _, err = cli(train_script, "--version", "v1", "--out", tmp_path / "runs", *TINY, "--val-frac", "0.0001",
                       capsys=capsys)
    assert_one_line_error(code, err, "--val-frac 0.0001: fold 0's validation split", "is empty")
    assert not (tmp_path / "runs").exists()

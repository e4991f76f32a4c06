"""train.py --relabel: the images a CSV lists train under the label it gives (the audit's relabel.csv), a path
--exclude lists too is kept, relabelled; bad files are refused in one line; and audit.py's relabel rule on a
hand-made case."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from imgcls.data import load_dataset
from imgcls.errors import UserError


def _write(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def demo():
    return load_dataset(None, size=(32, 32), log=lambda *a: None)


def test_relabel_moves_exactly_the_listed_images_and_exclude_spares_them(demo, tmp_path):
    names, labels = demo.class_names, demo.labels.numpy()
    moved = {3: names[1], 40: names[0], 41: names[9]}  # position -> new label
    file = _write(tmp_path / "relabel.csv", ["path", "label", "given"],
                  [[demo.paths[i], c, "x"] for i, c in moved.items()] + [["demo/not_there", names[0], "x"]])
    said = []
    got = load_dataset(None, size=(32, 32), relabel=file, log=said.append)
    expected = labels.copy()
    for i, c in moved.items():
        expected[i] = names.index(c)
    assert got.paths == demo.paths and got.class_names == names
    assert got.labels.numpy().tolist() == expected.tolist()  # the listed images, and only those
    assert f"--relabel {file}: 3 image(s) relabelled of {len(demo.paths)}; 1 listed path(s) are not in the " \
           "data set" in said
    # with --exclude listing two relabelled images and two others: the two others are left out, the two kept
    drop = _write(tmp_path / "drop.csv", ["path"], [[demo.paths[i]] for i in (3, 40, 7, 8)])
    said.clear()
    both = load_dataset(None, size=(32, 32), relabel=file, exclude=drop, log=said.append)
    keep = [i for i in range(len(demo.paths)) if i not in (7, 8)]
    assert both.paths == [demo.paths[i] for i in keep]
    assert both.labels.numpy().tolist() == expected[keep].tolist()
    assert sorted(s for s, _ in both.skipped) == sorted(demo.paths[i] for i in (7, 8))
    assert f"--exclude {drop}: 2 image(s) left out of {len(demo.paths)}; 2 listed image(s) kept, relabelled by " \
           "--relabel" in said


def test_a_class_whose_every_image_moves_is_gone(demo, tmp_path):
    names, labels = demo.class_names, demo.labels.numpy()
    last = np.flatnonzero(labels == len(names) - 1)  # the demo's smallest class
    file = _write(tmp_path / "relabel.csv", ["path", "label"], [[demo.paths[i], names[0]] for i in last])
    got = load_dataset(None, size=(32, 32), relabel=file, log=lambda *a: None)
    assert got.class_names == names[:-1] and got.labels.max() == len(names) - 2
    assert (got.labels.numpy()[last] == 0).all()


@pytest.mark.parametrize("header, rows, fragment", [
    (["path"], [["demo/digit_0_000000"]], "expected a header with `path` and `label` columns"),
    (["path", "label"], [["demo/digit_0_000000", "0"], ["demo/digit_0_000001", ""]], "row 3 has no path or no label"),
    (["path", "label"], [["demo/digit_0_000000", "Shoes"]], "row 2 gives the label 'Shoes', which is not a class"),
])
def test_a_bad_relabel_file_is_refused_naming_the_row(tmp_path, header, rows, fragment):
    file = _write(tmp_path / "relabel.csv", header, rows)
    with pytest.raises(UserError, match="--relabel .*relabel.csv: " + fragment.replace("(", r"\(")):
        load_dataset(None, size=(32, 32), relabel=file, log=lambda *a: None)


def test_the_relabel_rule_on_a_hand_made_case():
    from imgcls.audit import RELABEL_P, RELABEL_VOTES, should_relabel
    assert (RELABEL_P, RELABEL_VOTES) == (0.5, 10)
    p = [0.9, 0.5, 0.49, 0.9, 0.7]
    votes = [10, 12, 20, 9, 19]  # look-alikes under the suggested label, of 20
    assert should_relabel(p, votes).tolist() == [True, True, False, False, True]


def test_the_bench_counts_relabels_restored_to_the_true_label(monkeypatch):
    from tests.helpers import load_bench_script
    bench = load_bench_script(monkeypatch, "audit")
    paths = ["a", "b", "c", "d"]
    moved = bench.relabel_positions(paths, {"b": "cat", "d": "dog", "z": "cat"})
    assert moved == {1: "cat", 3: "dog"}
    labels = np.array([0, 0, 1, 0])  # clean labels: b is a cat (restored), d is a cat (made wrong)
    assert bench.relabel_counts(moved, labels, ["cat", "dog"]) == {"relabelled": 2, "restored": 1}


@pytest.mark.slow
def test_train_relabel_end_to_end_and_refused_before_restart(tmp_path, capsys):
    import train as train_script
    from helpers import assert_one_line_error, cli
    data = load_dataset(None, size=(32, 32), log=lambda *a: None)
    names = data.class_names
    file = _write(tmp_path / "relabel.csv", ["path", "label"], [[data.paths[i], names[1]] for i in range(5)])
    flags = ["--version", "v1", "--model", "tiny_efficientnet", "--pretrained", "none", "--img-size", "32",
             "--epochs", "1", "--workers", "1", "--device", "cpu", "--out", tmp_path / "runs"]
    code, out, err = cli(train_script, *flags, "--relabel", file, capsys=capsys)
    assert code == 0, err
    assert f"--relabel {file}: 5 image(s) relabelled of {len(data.paths)}" in out
    saved = json.loads((tmp_path / "runs" / "v1" / "fold0" / "config.json").read_text())
    assert saved["relabel"] == file
    # the run reads its data as it trained: the prediction API's run data carries the new labels
    import imgcls
    from imgcls.run import run_data
    got, _ = run_data(imgcls.load(tmp_path / "runs" / "v1", device="cpu").members, "all", log=lambda *a: None)
    assert got.labels[:5].tolist() == [1] * 5 and got.labels[5:].tolist() == data.labels[5:].tolist()
    # a file that is not there, or one inside the folder --restart would delete, is refused before anything goes
    code, _, err = cli(train_script, *flags, "--restart", "--relabel", tmp_path / "missing.csv", capsys=capsys)
    assert_one_line_error(code, err, f"--relabel {tmp_path / 'missing.csv'}", "cannot read")
    inside = tmp_path / "runs" / "v1" / "fold0" / "relabel.csv"
    inside.write_text(open(file).read())
    code, _, err = cli(train_script, *flags, "--restart", "--relabel", inside, capsys=capsys)
    assert_one_line_error(code, err, "--restart would delete", f"--relabel {inside}")
    # a label no class has is found when the data is read: still before --restart deletes the run
    from helpers import snapshot
    before = snapshot(tmp_path / "runs")
    wrong = _write(tmp_path / "wrong.csv", ["path", "label"], [[data.paths[0], "Shoes"]])
    code, _, err = cli(train_script, *flags, "--restart", "--relabel", wrong, capsys=capsys)
    assert_one_line_error(code, err, f"--relabel {wrong}: row 2 gives the label 'Shoes'")
    assert snapshot(tmp_path / "runs") == before

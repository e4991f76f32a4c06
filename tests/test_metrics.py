import json
import struct
import zlib

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from imgcls.errors import UserError
from imgcls.metrics import classification_metrics, per_class_report
from imgcls.plots import plot_confusion, plot_curves, plot_lr

NAMES = ["shirt", "shoe", "bag", "watch", "scarf"]


def _case():
    """Random labels over 5 classes where class 3 ("watch") never occurs in y_true but is predicted."""
    rng = np.random.default_rng(0)
    y_true = rng.choice([0, 1, 2, 4], size=60, p=[0.6, 0.25, 0.1, 0.05])
    y_pred = np.where(rng.random(60) < 0.7, y_true, rng.integers(0, 5, size=60))
    assert 3 not in y_true and 3 in y_pred
    return y_true, y_pred


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_scikit_learn_with_absent_class():
    y_true, y_pred = _case()
    m = classification_metrics(y_true, y_pred, NAMES)
    json.dumps(m)  # plain Python all the way down
    assert m["num_samples"] == 60
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
    for i, name in enumerate(NAMES):
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert row["support"] == s[i]
    assert m["per_class"]["watch"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(5)).tolist()
    # Smallest present class is "scarf" (index 4); the std skips the absent "watch".
    assert s[4] == min(s[s > 0])
    assert m["smallest_class_f1"] == pytest.approx(f[4])
    assert m["per_class_f1_std"] == pytest.approx(np.std(f[[0, 1, 2, 4]]))


def test_hand_computed_case_and_full_size_confusion():
    # true 0 0 1 1 ; pred 0 1 1 1 ; classes 2 and 3 absent everywhere.
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b", "c", "d"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # absent, unpredicted classes do not count
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert m["smallest_class_f1"] == pytest.approx(2 / 3)  # tie on support: the first class
    assert m["per_class_f1_std"] == pytest.approx(np.std([2 / 3, 0.8]))


def test_metrics_reject_bad_input():
    with pytest.raises(UserError, match="out of range"):
        classification_metrics([0, 5], [0, 1], NAMES)
    with pytest.raises(UserError, match="equal length"):
        classification_metrics([0, 1], [0], NAMES)
    with pytest.raises(UserError, match="integer"):
        classification_metrics(np.array([0.0, 1.0]), [0, 1], NAMES)


def test_per_class_report_table():
    y_true, y_pred = _case()
    m = classification_metrics(y_true, y_pred, NAMES)
    text = per_class_report(m, NAMES)
    lines = text.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2 : 2 + len(NAMES)]}
    ref = classification_report(y_true, y_pred, labels=range(5), target_names=NAMES, output_dict=True,
                                zero_division=0)
    for name in NAMES:
        assert [float(v) for v in rows[name][:3]] == pytest.approx(
            [ref[name]["precision"], ref[name]["recall"], ref[name]["f1-score"]], abs=5e-5
        )
        assert int(rows[name][3]) == ref[name]["support"]
    assert len({len(line) for line in lines if line}) == 1  # fixed width: every row lines up
    assert f"{m['macro_f1']:.4f}" in text and f"{m['accuracy']:.4f}" in text


def _png_size(path):
    """Width and height from a PNG's IHDR chunk, after checking signature and CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def test_plots_write_valid_pngs(tmp_path):
    lr_path = plot_lr([1e-3 * (i + 1) / 10 for i in range(10)] + [1e-3 * 0.9**i for i in range(40)],
                      tmp_path / "lr.png")
    rows = [
        {"epoch": e, "train_loss": 2 / (e + 1), "val_loss": 2.2 / (e + 1), "val_acc": 0.5 + e / 20,
         "val_macro_f1": 0.4 + e / 25}
        for e in range(6)
    ]
    rows.append({"epoch": 6, "train_loss": 0.3})  # a row without validation must not break the plot
    curves_path = plot_curves(rows, tmp_path / "sub" / "curves.png")
    names = [f"class_{i:02d}_long_name" for i in range(45)]
    cm = np.random.default_rng(0).integers(0, 50, size=(45, 45))
    cm[7] = 0  # a class absent from the evaluation split
    cm_path = plot_confusion(cm.tolist(), names, tmp_path / "cm.png")
    small_path = plot_confusion([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm_small.png")
    for path in (lr_path, curves_path, cm_path, small_path):
        assert path.exists() and path.stat().st_size > 5_000
        width, height = _png_size(path)
        assert width >= 300 and height >= 200
    assert min(_png_size(cm_path)) > 1000  # big enough for 45 labels


def test_plots_reject_bad_input(tmp_path):
    with pytest.raises(UserError, match="expected"):
        plot_confusion([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(UserError, match="no learning rates"):
        plot_lr([], tmp_path / "x.png")


def test_group_f1_matches_hand_computed_groups():
    from imgcls.metrics import group_f1

    # classes 0 (600 train images: head), 1 (100: medium), 2 (10: tail), 3 (5: tail, absent from y_true)
    train_counts = [600, 100, 10, 5]
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    # per class: 0: P 1, R .75 -> 6/7; 1: P .5, R .5 -> .5; 2: P .5, R .5 -> .5; class 3 not in y_true
    out = group_f1(y_true, y_pred, train_counts)
    assert out["head_f1"] == pytest.approx(6 / 7)
    assert out["medium_f1"] == pytest.approx(0.5)
    assert out["tail_f1"] == pytest.approx(0.5) and out["tail_classes"] == 1
    assert out["worst_class_f1"] == pytest.approx(0.5)
    assert np.isnan(group_f1([0, 0], [0, 0], train_counts)["tail_f1"])


def test_calibration_ece_and_bins_on_a_hand_computed_case():
    from imgcls.metrics import calibration
    # four images, two bins: confidences 0.9, 0.8 (bin [0.5, 1]), 0.3, 0.4 (bin [0, 0.5))
    probs = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.4, 0.3, 0.3]])
    y = np.array([0, 0, 2, 1])  # right, wrong, right, wrong
    out = calibration(probs, y, bins=2)
    low, high = out["bins"]
    assert (low["count"], high["count"]) == (2, 2)
    assert low["confidence"] == pytest.approx(0.4) and low["accuracy"] == 0.5   # (0.4 + 0.4) / 2; 1 of 2
    assert high["confidence"] == pytest.approx(0.85) and high["accuracy"] == 0.5
    # ECE = 2/4 * |0.5 - 0.4| + 2/4 * |0.5 - 0.85| = 0.05 + 0.175
    assert out["ece"] == pytest.approx(0.225)
    perfect = calibration(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2]), bins=10)
    assert perfect["ece"] == 0.0 and perfect["bins"][-1]["count"] == 3  # confidence 1.0 is in the last bin

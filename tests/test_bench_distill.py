"""bench/distill.py's split of a macro-F1 gap into the classes with few test images and the rest: a
hand-computed case, and on random labels the two parts add up to scikit-learn's macro-F1 difference."""
import numpy as np
import pytest
from sklearn.metrics import f1_score

from tests.helpers import load_bench_script


@pytest.fixture
def distill(monkeypatch):
    return load_bench_script(monkeypatch, "distill")


def test_gap_by_support_hand_computed(distill):
    y = np.array([0, 0, 1, 2])
    reference = np.array([0, 0, 1, 2])  # macro-F1 1.0 over classes 0, 1, 2
    pred = np.array([0, 0, 1, 0])       # class 0: P 2/3, R 1, F1 0.8; class 1: 1; class 2: 0 -> macro 0.6
    few, rest = distill.gap_by_support(y, pred, reference, small=1)
    # classes 1 and 2 have one test image each: (1 - 1) / 3 + (0 - 1) / 3; class 0 (two images): (0.8 - 1) / 3
    assert few == pytest.approx(-1 / 3) and rest == pytest.approx(-0.2 / 3)
    few, rest = distill.gap_by_support(y, pred, reference, small=2)
    assert few == pytest.approx(-0.4) and rest == pytest.approx(0.0)


def test_gap_by_support_adds_up_to_the_macro_f1_difference(distill):
    rng = np.random.default_rng(0)
    # a long tail, and predictions that also name classes absent from y (scikit-learn averages over both)
    y = rng.choice(12, size=300, p=np.r_[0.5, 0.2, 0.1, 0.08, 0.05, 0.03, 0.02, [0.004] * 5])
    pred, reference = rng.integers(0, 14, 300), np.where(rng.random(300) < 0.7, y, rng.integers(0, 12, 300))
    few, rest = distill.gap_by_support(y, pred, reference, small=5)
    expected = f1_score(y, pred, average="macro", zero_division=0) - f1_score(y, reference, average="macro",
                                                                                zero_division=0)
    assert few + rest == pytest.approx(expected, abs=1e-12)
    assert few != pytest.approx(0.0) and rest != pytest.approx(0.0)

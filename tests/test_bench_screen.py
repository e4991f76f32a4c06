"""bench/screen.py posthoc's per-class offsets rule (measured, not shipped): its fast macro-F1 is scikit-learn's,
and the coordinate ascent finds the threshold a constructed two-class problem needs."""
import numpy as np
from sklearn.metrics import f1_score

from tests.helpers import load_bench_script


def load_screen(monkeypatch):
    return load_bench_script(monkeypatch, "screen")  # it imports bench/common.py beside it


def test_fast_macro_f1_is_scikit_learns_over_the_union_of_labels(monkeypatch):
    screen, rng = load_screen(monkeypatch), np.random.default_rng(0)
    for _ in range(50):
        y, pred = rng.integers(0, 6, 40), rng.integers(0, 9, 40)  # predictions may name classes y lacks
        assert abs(screen.macro_f1(y, pred, 9) - f1_score(y, pred, average="macro", zero_division=0)) < 1e-12


def test_offsets_move_the_threshold_of_an_under_predicted_class(monkeypatch):
    """Class 1's score is shifted down by 1.5: argmax misses most of it; the best offset for class 1 (with
    class 0's at 0) lies between +1 and +2, and it lifts macro-F1 on the data it chose on by over 0.05."""
    screen, rng = load_screen(monkeypatch), np.random.default_rng(1)
    y = (rng.random(4000) < 0.3).astype(np.int64)
    scores = np.stack([np.zeros(len(y)), rng.normal(np.where(y == 1, 1.0, -1.0), 1.0) - 1.5], axis=1)
    offsets = screen.choose_offsets(scores, y)
    assert 1.0 <= offsets[1] - offsets[0] <= 2.0
    assert screen.macro_f1(y, (scores + offsets).argmax(1), 2) > screen.macro_f1(y, scores.argmax(1), 2) + 0.05


def test_screen_names_its_three_screenings_and_refuses_an_unknown_one(monkeypatch, capsys):
    screen = load_screen(monkeypatch)
    assert screen.main(["nope"]) == 2
    assert "member" in capsys.readouterr().err
    for name in ("member", "crt", "posthoc"):
        try:
            screen.main([name, "--help"])
        except SystemExit as stop:
            assert stop.code == 0
        assert f"bench/screen.py {name}" in capsys.readouterr().out

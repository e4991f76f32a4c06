"""curves.png and confusion.png say what they show: separate panels for the training objective and the
validation NLL, the run's name, the best and SWA epochs, integer epoch ticks, class sizes."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from imgcls.metrics import class_sizes
from imgcls.plots import curves_figure, objective_label, plot_curves, sized_labels

ROWS = [{"epoch": e, "train_loss": 3.0 / e, "val_loss": 2.0 / e + 0.1 * e, "val_acc": 0.4 + e / 50,
         "val_macro_f1": 0.3 + e / 60, "val_balanced_acc": 0.35 + e / 55} for e in range(1, 8)]


def _labels(ax):
    return ax.get_legend_handles_labels()[1]


def test_curves_separate_objective_and_nll_and_mark_best_and_swa():
    fig = curves_figure(ROWS, title="v3/fold0", objective="focal loss (class-balanced)", best_epoch=4,
                        swa_start=5)
    FigureCanvasAgg(fig).draw()
    train_ax, val_ax, score_ax = fig.axes
    assert "focal loss (class-balanced)" in train_ax.get_title() and "val" not in " ".join(_labels(train_ax))
    assert "NLL" in val_ax.get_title() and _labels(val_ax)[0] == "validation NLL"
    np.testing.assert_allclose(train_ax.lines[0].get_ydata(), [r["train_loss"] for r in ROWS])
    np.testing.assert_allclose(val_ax.lines[0].get_ydata(), [r["val_loss"] for r in ROWS])
    assert {"accuracy", "macro-F1", "balanced accuracy"} <= set(_labels(score_ax))
    for ax in fig.axes:
        assert "best epoch 4" in _labels(ax) and "SWA (from epoch 5)" in _labels(ax)
        best = [ln for ln in ax.lines if ln.get_label() == "best epoch 4"][0]
        assert list(best.get_xdata()) == [4, 4]
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert fig._suptitle.get_text() == "v3/fold0"


def test_curves_without_best_or_swa_draw_no_markers_and_name_the_run_from_its_folder(tmp_path):
    fig = curves_figure(ROWS[:2])
    assert not any("best" in lbl or "SWA" in lbl for ax in fig.axes for lbl in _labels(ax))
    path = plot_curves(ROWS, tmp_path / "v2.1" / "fold1" / "curves.png", best_epoch=3)
    assert path.stat().st_size > 5_000


def test_confusion_labels_carry_class_sizes():
    sizes = class_sizes([[3, 1, 0], [0, 0, 0], [2, 2, 5]])  # the true classes' sizes: the row sums
    assert sized_labels(["a", "b", "c"], sizes) == ["a (n=4)", "b (n=0)", "c (n=9)"]


def test_objective_label_names_what_the_run_optimises():
    from imgcls.presets import VERSIONS, resolve
    assert objective_label(resolve("v3", {}).to_dict()) == "class-balanced focal loss"
    assert objective_label(resolve("v2", {}).to_dict()) == ("cross-entropy, label smoothing 0.1, "
                                                           "mixed targets (Mixup/CutMix)")
    assert objective_label(resolve("v1", {}).to_dict()) == "cross-entropy"
    assert "v1" in VERSIONS


def test_after_training_lists_crt_then_the_tau_with_their_validation_scores():
    from imgcls.presets import resolve
    from imgcls.engine import after_training
    final = {"accuracy": 0.9, "macro_f1": 0.7, "balanced_accuracy": 0.72,
             "before_decision": {"accuracy": 0.88, "macro_f1": 0.65, "balanced_accuracy": 0.7}}
    v4 = resolve("v4", {})
    assert after_training(v4, final, -0.2) == [("cRT", final["before_decision"]), ("tau -0.2", final)]
    v1 = resolve("v1", {})
    assert after_training(v1, {"accuracy": 0.9, "macro_f1": 0.7}, 0.0) == []
    figure = curves_figure([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.8, "val_macro_f1": 0.6,
                             "val_balanced_acc": 0.6}], after=after_training(v4, final, -0.2))
    scores = figure.axes[2]
    # the last epoch's three scores, then each stage's, past the epochs
    xs = sorted({x for line in scores.get_lines() for x in line.get_xdata()})
    assert xs == [1, 1.5, 2.0]
    assert max(max(line.get_ydata()) for line in scores.get_lines()) == 0.9

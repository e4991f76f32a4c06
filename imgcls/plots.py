"""Training plots as PNG files: learning-rate schedule, per-epoch curves, row-normalised confusion matrix.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot): no display is needed, no
global backend is switched under the caller's feet, and nothing is left open between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from imgcls.errors import UserError


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # long class names must not be clipped
    return path


def plot_lr(lrs: Sequence[float], path) -> Path:
    """The learning rate of each optimizer update (log scale: warmup and min_lr both stay visible)."""
    if len(lrs) == 0:
        raise UserError(f"{path}: no learning rates recorded to plot")
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(np.arange(len(lrs)), lrs, lw=1.2)
    if min(lrs) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_curves(rows: Sequence[dict], path) -> Path:
    """Per-epoch train/val loss (left) and val accuracy / macro-F1 (right); missing keys are skipped."""
    if len(rows) == 0:
        raise UserError(f"{path}: no epochs recorded to plot")
    epochs = [r.get("epoch", i) for i, r in enumerate(rows)]
    fig = Figure(figsize=(11, 4), layout="constrained")
    loss_ax, score_ax = fig.subplots(1, 2)
    for ax, keys, title in (
        (loss_ax, ("train_loss", "val_loss"), "loss"),
        (score_ax, ("val_acc", "val_macro_f1"), "validation score"),
    ):
        for key in keys:
            points = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def plot_confusion(confusion, class_names: Sequence[str], path) -> Path:
    """Row-normalised confusion matrix (each true class sums to 1) sized to stay readable at ~45 classes."""
    cm = np.asarray(confusion, dtype=np.float64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise UserError(f"{path}: confusion matrix is {cm.shape}, expected ({n}, {n}) for the class names")
    row_sums = cm.sum(axis=1, keepdims=True)
    # Classes absent from the evaluation split have an all-zero row: show zeros rather than NaN.
    normalised = np.divide(cm, row_sums, out=np.zeros_like(cm), where=row_sums > 0)
    side = max(5.0, 0.22 * n + 2.5)
    fontsize = 8 if n <= 20 else 7
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, label="fraction of true class")
    ax.set_xticks(np.arange(n), labels=class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(n), labels=class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:  # numbers in the cells only while they fit
        for i, j in zip(*np.nonzero(normalised >= 0.005)):
            value = normalised[i, j]
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if value > 0.5 else "black")
    return _save(fig, path)

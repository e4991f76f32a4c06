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
from matplotlib.ticker import MaxNLocator

from imgcls import interrupt
from imgcls.errors import UserError
from imgcls.fsio import atomic_write
from imgcls.metrics import class_sizes, dense_confusion


def _save(fig: Figure, path, tight: bool = True) -> Path:
    """tight: fit the saved area to what was drawn (no clipped class names), at ~1.7x the drawing time; the
    figures with short fixed labels (lr.png, curves.png, drawn during training) rely on their constrained
    layout alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    # through a temp file like every writer: a kill mid-plot never leaves a truncated PNG
    with interrupt.deferred():
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100, bbox_inches="tight" if tight else None))
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
    return _save(fig, path, tight=False)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
                 suggestion: float | None, path) -> Path:
    """The lr range test: raw and smoothed loss against the lr (log axis), the suggestion marked."""
    if len(lrs) == 0:
        raise UserError(f"{path}: the lr sweep recorded no update to plot")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(lrs, losses, lw=0.8, alpha=0.35, label="loss")
    ax.plot(lrs, smoothed, lw=1.6, label="smoothed loss")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", ls="--", lw=1.2, label=f"suggested --lr {suggestion:.1e}")
    ax.set_xscale("log")
    # the raw loss of the last, diverging updates would squash the useful part of the curve
    lowest = int(np.argmin(smoothed))
    low = min(float(smoothed[lowest]), float(np.min(losses[:lowest + 1])))
    high = float(np.max(smoothed[: max(1, len(smoothed) // 10)]))
    ax.set_ylim(low - 0.1 * (high - low + 1e-8), high + 0.5 * (high - low + 1e-8))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


_LOSS_NAMES = {"ce": "cross-entropy", "weighted_ce": "class-weighted cross-entropy", "focal": "focal loss",
               "cb_focal": "class-balanced focal loss", "logit_adjusted": "logit-adjusted loss",
               "balanced_softmax": "balanced softmax loss"}


def objective_label(cfg: dict) -> str:
    """What a run's train_loss is, from its config: 'class-balanced focal loss', '... + label smoothing 0.1,
    mixed targets (Mixup/CutMix)'."""
    text = _LOSS_NAMES.get(cfg.get("loss"), f"{cfg.get('loss', 'training')} loss")
    extras = []
    if cfg.get("label_smoothing"):
        extras.append(f"label smoothing {cfg['label_smoothing']}")
    if cfg.get("mix_prob") and (cfg.get("mixup_alpha") or cfg.get("cutmix_alpha")):
        extras.append("mixed targets (Mixup/CutMix)")
    return text + (f", {', '.join(extras)}" if extras else "")


def curves_figure(rows: Sequence[dict], *, title: str = "", objective: str = "training objective",
                  best_epoch: int | None = None, swa_start: int | None = None,
                  after: Sequence[tuple[str, dict]] = ()) -> Figure:
    """Three panels: the training objective, the validation NLL, the validation scores per epoch.

    The training loss is whatever the run optimises (focal, class-weighted, on mixed targets, on augmented
    batches) and the validation loss is the plain negative log-likelihood of clean images: different
    quantities, so each gets its own panel and y axis instead of one shared axis that invites comparison.
    The best epoch (dashed line) and the SWA epochs (shaded) are marked on every panel. `after`: the stages
    that follow the epochs, in order, as (name, validation metrics), e.g. ("cRT", ...), ("tau +0.2", ...):
    drawn past the last epoch on the scores panel, so the curve ends at the score the run reports.
    """
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    fig = Figure(figsize=(14, 4), layout="constrained")
    panels = fig.subplots(1, 3)
    specs = (
        (panels[0], (("train_loss", "training loss (augmented batches)"),), f"training: {objective}"),
        (panels[1], (("val_loss", "validation NLL"),), "validation NLL (-log p of the true class)"),
        (panels[2], (("val_acc", "accuracy"), ("val_macro_f1", "macro-F1"),
                     ("val_balanced_acc", "balanced accuracy")), "validation scores"),
    )
    for ax, keys, panel_title in specs:
        for key, label in keys:
            points = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", ms=3, label=label)
        if swa_start is not None and epochs and swa_start <= max(epochs):
            ax.axvspan(swa_start - 0.5, max(epochs) + 0.5, color="tab:orange", alpha=0.12,
                       label=f"SWA (from epoch {swa_start})")
        if best_epoch:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=f"best epoch {best_epoch}")
        if ax is panels[2] and after and epochs:
            xs = [max(epochs) + 0.5 * (k + 1) for k in range(len(after))]
            for (key, _), colour in zip(keys, ("tab:blue", "tab:orange", "tab:green")):
                metric = {"val_acc": "accuracy", "val_macro_f1": "macro_f1",
                          "val_balanced_acc": "balanced_accuracy"}[key]
                ax.plot(xs, [m[metric] for _, m in after], ls=":", marker="s", ms=4, color=colour)
            for x, (name, _) in zip(xs, after):
                ax.annotate(name, (x, ax.get_ylim()[0]), fontsize=7, ha="center", va="bottom")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(rows: Sequence[dict], path, *, title: str | None = None, objective: str = "training objective",
                best_epoch: int | None = None, swa_start: int | None = None,
                after: Sequence[tuple[str, dict]] = ()) -> Path:
    """curves.png (see curves_figure). title None names the run from its folder: OUT/<version>/fold<k>."""
    if len(rows) == 0:
        raise UserError(f"{path}: no epochs recorded to plot")
    path = Path(path)
    if title is None:
        title = f"{path.parent.parent.name}/{path.parent.name}"
    return _save(curves_figure(rows, title=title, objective=objective, best_epoch=best_epoch,
                               swa_start=swa_start, after=after), path, tight=False)


def printable(name: str) -> str:
    """A class name as text a plot can draw: a folder name that is not valid UTF-8 arrives with surrogate
    escapes, which matplotlib refuses; its undecodable bytes become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def sized_labels(class_names: Sequence[str], sizes) -> list[str]:
    return [f"{printable(name)} (n={int(n)})" for name, n in zip(class_names, sizes)]


# Above this many classes the plot shows the largest ones (by images of the class in the split): one row per
# class stops being readable long before, and the full matrix is in metrics.json. Sized to stay readable at
# ~45 classes.
PLOT_CLASSES_MAX = 60


def plot_confusion(confusion, class_names: Sequence[str], path) -> Path:
    """Row-normalised confusion matrix (each true class sums to 1), classes largest first, with the image
    counts in the cells up to 20 classes; `confusion` as metrics.classification_metrics stores it (dense, or
    the non-zero cells of a large one)."""
    total = len(class_names)
    shape = tuple(confusion["shape"]) if isinstance(confusion, dict) else np.shape(confusion)
    if shape != (total, total):
        raise UserError(f"{path}: confusion matrix is {shape}, expected ({total}, {total}) for the class names")
    # largest class first (ties by name): the head's block, then the tail's rows, where the misses are
    sizes = class_sizes(confusion)
    shown = np.argsort(-sizes, kind="stable")[:PLOT_CLASSES_MAX]
    class_names, sizes = [class_names[i] for i in shown], sizes[shown]
    counts = dense_confusion(confusion, shown)
    cm = counts.astype(np.float64)
    n = len(class_names)
    row_sums = sizes[:, None].astype(np.float64)  # the whole row: misses into classes not shown count too
    # Classes absent from the evaluation split have an all-zero row: show zeros rather than NaN.
    normalised = np.divide(cm, row_sums, out=np.zeros_like(cm), where=row_sums > 0)
    side = max(5.0, 0.22 * n + 2.5)
    fontsize = 8 if n <= 20 else 7
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, label="fraction of true class")
    ax.set_xticks(np.arange(n), labels=[printable(c) for c in class_names], rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(n), labels=sized_labels(class_names, sizes), fontsize=fontsize)
    ax.set_title(f"classes by size{f', the {n} largest of {total} (all: metrics.json)' if n < total else ''}; "
                 "colour: share of the true class" + ("; numbers: images" if n <= 20 else ""), fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (n = images of the class here)")
    if n <= 20:  # counts in the cells only while they fit
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=fontsize,
                    color="white" if normalised[i, j] > 0.5 else "black")
    return _save(fig, path)

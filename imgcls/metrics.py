"""Classification metrics for imbalanced data: numpy in, plain JSON-able Python out (scikit-learn inside).

Conventions, chosen so that a class missing from an evaluation split never crashes or distorts a run:
- per-class precision/recall/F1 use zero_division=0 and are reported for every class name;
- macro F1 averages over the classes that occur in y_true or y_pred (scikit-learn's default): a class
  that is absent and never predicted says nothing about the model, one that is predicted but absent
  counts as F1 0 (its false positives are real mistakes);
- balanced accuracy, smallest_class_f1 and per_class_f1_std use the classes present in y_true only;
- the confusion matrix is always C x C over all class names, rows = true class: a list of lists up to
  DENSE_CONFUSION_MAX classes, above that its non-zero cells (a dense 20,000-class matrix is 3 GB).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from imgcls.errors import UserError

DENSE_CONFUSION_MAX = 256


def _labels(values, name: str, num_classes: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise UserError(f"{name}: expected a 1-D array of integer class indices, got shape {arr.shape} {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise UserError(f"{name}: class index {int(arr.max())} out of range for {num_classes} class names")
    return arr.astype(np.int64)


def classification_metrics(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """Accuracy, macro/weighted F1, balanced accuracy, per-class P/R/F1/support and the confusion matrix.

    Returns a dict with keys accuracy, macro_f1, weighted_f1, balanced_accuracy, per_class
    ({name: {precision, recall, f1, support}}), confusion_matrix (list of lists, rows = true),
    smallest_class_f1, per_class_f1_std, num_samples; every value is a Python float/int/list/dict.
    """
    num_classes = len(class_names)
    y_true = _labels(y_true, "y_true", num_classes)
    y_pred = _labels(y_pred, "y_pred", num_classes)
    if y_true.size == 0 or y_true.shape != y_pred.shape:
        raise UserError(
            f"metrics: y_true ({y_true.size}) and y_pred ({y_pred.size}) must be non-empty and of equal length"
        )
    all_labels = np.arange(num_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, zero_division=0
    )
    present = support > 0
    # scikit-learn's balanced_accuracy_score is the mean recall over the classes present in y_true, computed
    # from a dense confusion matrix; the same mean from the per-class recalls needs O(C) memory
    balanced = float(recall[present].mean())
    smallest = int(np.flatnonzero(present)[np.argmin(support[present])])
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "balanced_accuracy": float(balanced),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion(y_true, y_pred, num_classes),
        "smallest_class_f1": float(f1[smallest]),
        "per_class_f1_std": float(np.std(f1[present])),
        "num_samples": int(y_true.size),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int):
    """Rows = true class. Up to DENSE_CONFUSION_MAX classes a list of lists; above, {"shape": [C, C],
    "cells": [[true, predicted, count], ...]} with every non-zero cell (the same information in O(N))."""
    codes = y_true.astype(np.int64) * num_classes + y_pred
    if num_classes <= DENSE_CONFUSION_MAX:
        return np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes).tolist()
    cells, counts = np.unique(codes, return_counts=True)
    return {"shape": [num_classes, num_classes],
            "cells": [[int(c // num_classes), int(c % num_classes), int(n)] for c, n in zip(cells, counts)]}


def dense_confusion(matrix, rows=None) -> np.ndarray:
    """A confusion matrix from classification_metrics as a dense array, restricted to the classes `rows`
    (true and predicted alike) when given."""
    if isinstance(matrix, dict):
        num_classes = matrix["shape"][0]
        keep = np.arange(num_classes) if rows is None else np.asarray(rows)
        where = np.full(num_classes, -1)
        where[keep] = np.arange(len(keep))
        out = np.zeros((len(keep), len(keep)), dtype=np.int64)
        for t, p, n in matrix["cells"]:
            if where[t] >= 0 and where[p] >= 0:
                out[where[t], where[p]] = n
        return out
    dense = np.asarray(matrix, dtype=np.int64)
    return dense if rows is None else dense[np.ix_(rows, rows)]


def class_sizes(matrix) -> np.ndarray:
    """Images per true class (row sums) of a dense or sparse confusion matrix."""
    if isinstance(matrix, dict):
        sizes = np.zeros(matrix["shape"][0], dtype=np.int64)
        for t, _, n in matrix["cells"]:
            sizes[t] += n
        return sizes
    return np.asarray(matrix, dtype=np.int64).sum(axis=1)


def calibration(probs: np.ndarray, y_true, bins: int = 15) -> dict:
    """Expected calibration error and the reliability diagram's bins (Guo et al. 2017): the top-1
    confidence max_c p(c|x) in `bins` equal-width bins of [0, 1] (the last one closed); per bin its count,
    mean confidence and accuracy; ECE = sum over bins of count / N * |accuracy - confidence|."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probs.ndim != 2 or len(probs) != len(y_true) or len(y_true) == 0:
        raise UserError(f"calibration: probabilities {probs.shape} and {len(y_true)} labels do not match")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if n:
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            ece += n / len(y_true) * abs(acc - conf)
            table.append({"low": b / bins, "high": (b + 1) / bins, "count": n, "confidence": conf,
                          "accuracy": acc})
    return {"ece": float(ece), "bins": table, "num_bins": bins}


def per_class_report(metrics: dict, class_names: Sequence[str]) -> str:
    """A fixed-width text table (like sklearn's classification_report) from classification_metrics()."""
    width = max([len(n) for n in class_names] + [len("weighted avg")])
    header = f"{'':>{width}}  {'precision':>9}  {'recall':>9}  {'f1-score':>9}  {'support':>9}"
    lines = [header, ""]
    for name in class_names:
        row = metrics["per_class"][name]
        lines.append(
            f"{name:>{width}}  {row['precision']:9.4f}  {row['recall']:9.4f}  {row['f1']:9.4f}  {row['support']:9d}"
        )
    n = metrics["num_samples"]
    lines += [
        "",
        f"{'accuracy':>{width}}  {'':>9}  {'':>9}  {metrics['accuracy']:9.4f}  {n:9d}",
        f"{'macro avg':>{width}}  {'':>9}  {'':>9}  {metrics['macro_f1']:9.4f}  {n:9d}",
        f"{'weighted avg':>{width}}  {'':>9}  {'':>9}  {metrics['weighted_f1']:9.4f}  {n:9d}",
        f"{'balanced acc':>{width}}  {'':>9}  {'':>9}  {metrics['balanced_accuracy']:9.4f}  {n:9d}",
    ]
    return "\n".join(lines) + "\n"


# Class groups by training-set size, as the long-tail literature reports them (Kang et al. 2020 use 100/20 on
# ImageNet-LT; our classes are fewer and larger, so many-shot starts at 500 and few-shot is under 50).
GROUPS = (("head", 500, None), ("medium", 50, 500), ("tail", 0, 50))


def group_f1(y_true, y_pred, train_counts) -> dict:
    """Mean F1 of the head (>= 500 training images), medium (50-499) and tail (< 50) classes, and the worst
    class F1, over the classes present in y_true; a group with no such class is NaN."""
    train_counts = np.asarray(train_counts)
    num_classes = len(train_counts)
    y_true = _labels(y_true, "y_true", num_classes)
    y_pred = _labels(y_pred, "y_pred", num_classes)
    f1 = f1_score(y_true, y_pred, labels=np.arange(num_classes), average=None, zero_division=0)
    present = np.bincount(y_true, minlength=num_classes) > 0
    out = {}
    for name, low, high in GROUPS:
        member = present & (train_counts >= low) & (train_counts < (high if high is not None else np.inf))
        out[f"{name}_f1"] = float(f1[member].mean()) if member.any() else float("nan")
        out[f"{name}_classes"] = int(member.sum())
    out["worst_class_f1"] = float(f1[present].min())
    return out

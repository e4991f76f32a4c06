"""The decision rule: post-hoc logit adjustment (Menon et al. 2021) with its strength chosen on validation.

    adjusted log-probabilities = log p(y|x) - tau * log prior(y),   prior = training class frequencies

tau = 1 removes the training prior entirely (the Bayes rule for a balanced test set: best balanced accuracy),
tau = 0 keeps the model's own prior. Our test sets follow the training distribution and the metric is
macro-F1, whose best rule lies in between, so tau is chosen on the validation split. Negative values add the
prior back, which is what a classifier re-trained with balanced sampling (decoupling.py) needs, since it was
fitted to a uniform prior.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score

from . import labels

# The grid the validation search walks: steps of 0.1 from "add the whole prior back" to "remove all of it".
TAU_GRID = tuple(round(float(t), 1) + 0.0 for t in np.arange(-1.0, 1.0001, 0.1))  # + 0.0: no -0.0


def log_prior(class_counts) -> np.ndarray:
    """float64 log class frequencies; a class without training images gets log(1e-12), not an error."""
    return labels.log_prior(class_counts, "the decision rule", empty_ok=True, dtype=torch.float64).numpy()


def adjust(probs: np.ndarray, class_counts, tau: float) -> np.ndarray:
    """softmax(log probs - tau * log prior) in float32; tau = 0 returns the probabilities unchanged."""
    if tau == 0:
        return np.asarray(probs, dtype=np.float32)
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None)) - tau * log_prior(class_counts)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def choose_tau(probs: np.ndarray, labels: np.ndarray, class_counts, grid=TAU_GRID) -> tuple[float, dict]:
    """The tau of `grid` that maximises macro-F1 of argmax(adjust(probs, tau)) on labelled (validation) data.

    Ties go to the smallest |tau| (the least change to the model's own rule). Returns (tau, {tau: macro-F1}).
    Macro-F1 is scikit-learn's (classes in labels or predictions), as metrics.py reports it."""
    labels = np.asarray(labels)
    scores = {}
    for tau in grid:
        pred = adjust(probs, class_counts, tau).argmax(axis=1)
        scores[float(tau)] = float(f1_score(labels, pred, average="macro", zero_division=0))
    best = max(scores, key=lambda t: (round(scores[t], 12), -abs(t)))
    return best, scores

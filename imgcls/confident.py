"""Label errors by confident learning (Northcutt, Jiang, Chuang, JAIR 2021) on out-of-fold probabilities.

Written from the paper and checked against cleanlab 2.x, its reference implementation, number for number
(tests/test_confident.py): the same per-class thresholds, confident joint, calibration and
pruning by the estimated noise rate, so that a user who knows cleanlab's `find_label_issues` gets its answer.
Pure numpy; `labels` are class indices N, `probs` out-of-fold probabilities N x K (each row from a model that
did not train on that image).

1. Threshold t_j: the mean probability of class j over the images labelled j (its expected self-confidence).
2. Confident joint C[i][j]: images labelled i whose probability of j reaches t_j (the largest probability
   when several classes do); its rows are then calibrated to the label counts and the whole to N.
3. Pruning by noise rate: for every off-diagonal cell (given i, true j), the C[i][j] images labelled i with
   the largest margin p_j - p_i are flagged, keeping at least one image per class.
4. What the model itself predicts as the given label is never flagged; the flagged images are ranked by their
   self-confidence p_given (or the normalised margin).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6                 # the float comparisons' tolerance
THRESHOLD_FLOOR = 2 * EPS  # thresholds are clipped from below so that `p >= t - EPS` stays meaningful
ABSENT = 2.0               # the threshold of a class no image is labelled with: no probability reaches it


def thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """t_j = mean of p_j over the images labelled j (ABSENT for classes without images), clipped from below."""
    k = probs.shape[1]
    t = np.array([probs[labels == j, j].mean() if np.any(labels == j) else ABSENT for j in range(k)])
    return np.clip(t, THRESHOLD_FLOOR, None)


def round_keeping_sum(values: np.ndarray) -> np.ndarray:
    """Round to integers whose sum is the rounded sum of `values`: the entries rounded the wrong way by the
    most are moved by one (largest remainder)."""
    values = np.asarray(values, dtype=float)
    ints = values.round()
    target = values.sum().round()
    while abs(ints.sum().round() - target) > EPS:
        diff = np.round(target - ints.sum().round())
        step = -1 if diff < 0 else 1
        order = np.argsort(values - ints)[::-step][:min(int(abs(diff)), len(values))]
        ints[order] += step
    return ints.astype(int)


def round_rows(matrix: np.ndarray) -> np.ndarray:
    return np.apply_along_axis(round_keeping_sum, 1, matrix).astype(int)


def confident_guess(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(some, guess): whether any class's probability reaches its threshold, and which class the image then
    counts for in the joint (the largest probability when several do)."""
    confident = probs >= thresholds(labels, probs) - EPS
    count = confident.sum(1)
    return count > 0, np.where(count > 1, probs.argmax(1), confident.argmax(1))


def confident_joint(labels: np.ndarray, probs: np.ndarray, calibrate: bool = True) -> np.ndarray:
    """C[given][true] (K x K ints): step 2 of the module docstring. Each class keeps at least one image on the
    diagonal; calibrated, row i sums to the count of label i and the matrix to N."""
    labels = np.asarray(labels)
    k = probs.shape[1]
    some, guess = confident_guess(labels, probs)
    joint = np.zeros((k, k), dtype=int)
    np.add.at(joint, (labels[some], guess[some]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    if not calibrate:
        return joint
    label_counts = np.bincount(labels, minlength=k)
    rows = (joint.T / np.clip(joint.sum(1), 1e-100, None) * label_counts).T
    return round_rows(rows / np.clip(rows.sum(), 1e-100, None) * label_counts.sum())


def prune_counts(joint: np.ndarray, keep: int = 1) -> np.ndarray:
    """How many images to flag per (true, given) cell: the transposed joint with each diagonal raised to at
    least `keep` images, the rise taken evenly from the column's non-zero off-diagonal cells (truncated)."""
    counts = joint.T.astype(float)
    diagonal = np.maximum(counts.diagonal(), keep)
    rise = diagonal - counts.diagonal()
    cells = np.maximum(np.count_nonzero(counts, axis=0) - 1.0, 1.0)
    counts = np.clip(counts - rise / cells, 0, None)
    np.fill_diagonal(counts, diagonal)
    return round_rows(counts.astype(int))


def self_confidence(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(labels)), labels]


def normalized_margin(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(p_given - max of the other classes + 1) / 2, in [0, 1]: low = likely mislabelled."""
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return (self_confidence(labels, probs) - others.max(1) + 1) / 2


SCORES = {"self_confidence": self_confidence, "normalized_margin": normalized_margin}


FILTERS = ("prune_by_noise_rate", "both")


def label_issues(labels: np.ndarray, probs: np.ndarray, keep: int = 1,
                 filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    """Boolean mask N of the images confident learning flags: pruning by noise rate (steps 1-4), or with
    filter_by="both" (cleanlab's name) only those that pruning by class flags too, i.e. that are also among
    the images of their given class with the lowest self-confidence, as many as the joint says are
    mislabelled there: fewer, more precise flags."""
    if filter_by not in FILTERS:
        raise ValueError(f"filter_by {filter_by!r}: expected one of {FILTERS}")
    labels = np.asarray(labels)
    k = probs.shape[1]
    to_prune = prune_counts(confident_joint(labels, probs), keep)
    flagged = np.zeros(len(labels), dtype=bool)
    by_class = np.zeros(len(labels), dtype=bool)
    for given in range(k):
        rows = np.flatnonzero(labels == given)
        if len(rows) <= max(keep, 1):  # too few images to flag any and keep `keep`
            continue
        mask = np.zeros(len(rows), dtype=bool)
        for true in range(k):
            n = to_prune[true, given]
            if true != given and n > 0:
                margin = probs[rows, true] - probs[rows, given]
                mask[np.argsort(-margin)[:n]] = True
        flagged[rows] = mask
        lowest = len(rows) - to_prune[given, given]  # pruning by class: the least self-confident images
        if lowest >= 1:
            by_class[rows[np.argsort(probs[rows, given])[:lowest]]] = True
    if filter_by == "both":
        flagged &= by_class
    bumped = probs.copy()
    bumped[np.arange(len(labels)), labels] += EPS
    flagged[bumped.argmax(1) == labels] = False  # the model agrees with the label: not an issue
    return flagged


def ranked_issues(labels: np.ndarray, probs: np.ndarray, rank_by: str = "self_confidence",
                  filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    """Indices of the flagged images, most likely mislabelled first (lowest score)."""
    flagged = np.flatnonzero(label_issues(labels, probs, filter_by=filter_by))
    scores = SCORES[rank_by](np.asarray(labels), probs)
    return flagged[np.argsort(scores[flagged])]


def argmax_disagrees(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The simplest baseline: flag where the out-of-fold argmax is not the given label."""
    return probs.argmax(1) != np.asarray(labels)

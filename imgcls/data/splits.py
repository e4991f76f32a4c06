"""Holdout test split, then k-fold (or one holdout) validation folds, stratified by class.

Classes too small for a split are never dropped: they stay in training (in every fold), and the split says
so in `kept_in_train` and `notes`. A single-image class therefore never breaks a split.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from sklearn.model_selection import StratifiedKFold

from imgcls.errors import UserError
from imgcls.fsio import atomic_write


def auto_num_folds(class_counts) -> int:
    """V3's rule for k: 2 if the smallest class has fewer than 3 images, else min(3, smallest class)."""
    counts = [int(c) for c in (class_counts.values() if isinstance(class_counts, dict) else class_counts)]
    counts = [c for c in counts if c > 0]
    if not counts:
        raise UserError("auto_num_folds: no class has any image; check the data set")
    smallest = min(counts)
    return 2 if smallest < 3 else min(3, smallest)


def make_split(labels, test_frac: float = 0.2, num_folds: int = 1, val_frac: float = 0.2, seed: int = 0,
               class_names: list[str] | None = None, test: np.ndarray | None = None) -> dict:
    """Split item indices into a stratified test set and train/val folds.

    test_frac 0 gives no test set; num_folds >= 2 uses StratifiedKFold on what is left, num_folds == 1 one
    stratified holdout of val_frac. `test` given: that test set instead of a drawn one (a distilled student
    keeps its teacher's). The result is plain data (lists of ints), ready for JSON. class_names only
    makes the notes readable.
    """

    def name(c: int) -> str:
        return repr(class_names[c]) if class_names else f"class {c}"

    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= test_frac < 1.0:
        raise UserError(f"--test-frac {test_frac}: must be in [0, 1)")
    if num_folds < 1:
        raise UserError(f"--folds {num_folds}: must be 1 (holdout) or >= 2 (k-fold)")
    if num_folds == 1 and not 0.0 < val_frac < 1.0:
        raise UserError(f"--val-frac {val_frac}: must be in (0, 1)")
    rng = np.random.default_rng(seed)
    notes: list[str] = []

    everything = np.arange(len(labels))
    if test is None:
        rest, test, no_test = _stratified_holdout(everything, labels, test_frac, rng)
    else:
        test = np.unique(np.asarray(test, dtype=np.int64))
        rest, no_test = np.setdiff1d(everything, test), {}
    if test_frac > 0 and no_test:
        notes.append("too small for the test split (kept for train/val): "
                     + ", ".join(f"{name(c)} (n={n})" for c, n in sorted(no_test.items())))

    kept_in_train: dict[int, int] = {}
    folds = []
    if num_folds == 1:
        train, val, kept_in_train = _stratified_holdout(rest, labels, val_frac, rng)
        folds.append({"train": sorted(train.tolist()), "val": sorted(val.tolist())})
    else:
        rest_counts = np.bincount(labels[rest], minlength=labels.max() + 1 if len(labels) else 0)
        small = {c: int(n) for c, n in enumerate(rest_counts) if 0 < n < num_folds}
        kept_in_train = small
        always_train = rest[np.isin(labels[rest], list(small))]
        foldable = rest[~np.isin(labels[rest], list(small))]
        if len(foldable) == 0:
            raise UserError(f"--folds {num_folds}: no class has {num_folds} images outside the test split; "
                            "use fewer folds or --folds 1")
        kfold = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        for train_pos, val_pos in kfold.split(foldable, labels[foldable]):
            train = np.concatenate([foldable[train_pos], always_train])
            folds.append({"train": sorted(train.tolist()), "val": sorted(foldable[val_pos].tolist())})
    if kept_in_train:
        notes.append("too small for validation, in train of every fold: "
                     + ", ".join(f"{name(c)} (n={n})" for c, n in sorted(kept_in_train.items())))
    return {"seed": seed, "test": sorted(test.tolist()), "folds": folds,
            "kept_in_train": {int(c): int(n) for c, n in sorted(kept_in_train.items())}, "notes": notes}


def _stratified_holdout(items: np.ndarray, labels: np.ndarray, frac: float, rng: np.random.Generator):
    """Per class, hold out round(n * frac) of `items` (at most n - 1, so a class is never all held out).

    Returns (kept, held_out, classes that contributed nothing to held_out -> their size).
    """
    kept, held, none_held = [], [], {}
    for c in np.unique(labels[items]):
        members = items[labels[items] == c]
        n_held = min(int(round(len(members) * frac)), len(members) - 1)
        if n_held <= 0:
            none_held[int(c)] = len(members)
            kept.append(members)
            continue
        shuffled = rng.permutation(members)
        held.append(shuffled[:n_held])
        kept.append(shuffled[n_held:])
    as_array = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return as_array(kept), as_array(held), none_held


def paths_digest(paths: list[str]) -> str:
    """A hash of the ordered file list, relative to its common folder.

    A split is only meaningful for the data set it was made from; taking paths relative to their common
    folder keeps it valid when the whole data set is moved or mounted elsewhere.
    """
    try:
        root = os.path.commonpath(paths) if len(paths) > 1 else ""
    except ValueError:  # a mix of absolute and relative paths: hash them as they are
        root = ""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(os.path.relpath(p, root) if root else p) + b"\n")  # any file name, UTF-8 or not
    return h.hexdigest()


def save_split(path: str, split: dict, paths: list[str]) -> None:
    """Write the split as JSON with the size and hash of the file list it indexes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    record = dict(split, num_items=len(paths), paths_sha256=paths_digest(paths))
    atomic_write(path, json.dumps(record))  # unique temp: two runs saving the same split never collide


def load_split(path: str, paths: list[str]) -> dict:
    """Read a split saved by save_split; UserError if it was made for a different file list."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read the split ({err}); delete it to make a new one") from None
    if record.get("num_items") != len(paths) or record.get("paths_sha256") != paths_digest(paths):
        raise UserError(f"{path}: made for a different data set ({record.get('num_items')} items, now "
                        f"{len(paths)} or different files); use the same --data or delete the split file")
    split = {k: v for k, v in record.items() if k not in ("num_items", "paths_sha256")}
    split["kept_in_train"] = {int(c): n for c, n in split.get("kept_in_train", {}).items()}
    return split

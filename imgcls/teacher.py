"""The teacher of a distilled run (`--teacher RUN`): its test split, which the student is split around, and
its log-probabilities on the student's training images (distill.py mixes them into the loss). Sits above
api.py, which it uses to run the teacher exactly as predict.py would."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .errors import UserError


def _named(read: Callable, teacher: str, **kwargs):
    """read(teacher, ...) with its refusal naming the flag: on a resume the teacher may have gone, and the
    line must say that it is --teacher's run that is missing."""
    try:
        return read(teacher, **kwargs)
    except UserError as err:
        if str(err).startswith("--teacher"):
            raise
        raise UserError(f"--teacher {teacher}: {err}") from None


def teacher_test(teacher: str, paths: list) -> np.ndarray:
    """The teacher's held-out test images as indices into `paths` (this run's data set): a student that
    distils from it is split around the same test set, so it never learns from the teacher's view of the
    images it is scored on."""
    from .data.splits import load_split
    from .run import SPLIT, find_checkpoints
    split_file = _named(find_checkpoints, teacher)[0].parent / SPLIT
    if not split_file.exists():
        raise UserError(f"--teacher {teacher}: {split_file} not found: the teacher's test split is unknown; "
                        f"pass a run folder or a fold folder")
    return np.asarray(load_split(str(split_file), paths)["test"], dtype=np.int64)


def teacher_log_probs(teacher: str, images: torch.Tensor, paths: list, index: np.ndarray, class_names: list,
                      test: np.ndarray, device: torch.device, log: Callable = print,
                      chunk: int = 2048) -> torch.Tensor:
    """log p_teacher for the images in `index` (rows of a len(images) x C table; other rows 0), in chunks
    (the images may be a memory mapping larger than RAM). Refuses a teacher with other classes, another
    storage size, or one whose held-out test split is not this run's `test` (a student run that existed
    before it was given this teacher: the teacher may have trained on images the student is scored on)."""
    from . import api
    clf = _named(api.load, teacher, device=str(device), log=log)
    if list(clf.classes) != list(class_names):
        raise UserError(f"--teacher {teacher}: was trained on {len(clf.classes)} other classes; distil with "
                        f"the teacher's --data")
    if tuple(clf.storage_size) != tuple(images.shape[-2:]):
        h, w = clf.storage_size
        raise UserError(f"--teacher {teacher}: stores images at {h}x{w}, this run at "
                        f"{images.shape[-2]}x{images.shape[-1]}; pass --storage-size {h}x{w}")
    if not np.array_equal(teacher_test(teacher, paths), np.sort(np.asarray(test))):
        raise UserError(f"--teacher {teacher}: its held-out test split is not this run's (it may have trained "
                        f"on images this run is scored on); start the student in a new --out (it takes the teacher's test split)")
    log(f"--teacher {teacher}: {len(clf.members)} model(s) x {len(clf.views)} view(s) on the {len(index)} "
        f"training images, once")
    table = torch.zeros(len(images), len(class_names))
    for start in range(0, len(index), chunk):
        rows = torch.as_tensor(index[start:start + chunk])
        probs = clf.probabilities(images[rows])
        table[rows] = torch.from_numpy(np.log(np.clip(probs, 1e-12, None)))
    return table

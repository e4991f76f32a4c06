"""The data pipeline: source -> index -> decoded uint8 tensor (cached) -> split -> sampler -> batched augment.

`load_dataset` is the one call the training engine and predict.py make to get pixels and labels; splits,
samplers and augmentation live in their own modules and work on the tensors it returns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from imgcls.data.cache import decode_images
from imgcls.data.sources import Index, demo_set, load_index
from imgcls.errors import UserError
from imgcls.fsio import atomic_write

__all__ = ["Dataset", "Index", "load_dataset", "load_index", "write_skipped"]


@dataclass
class Dataset:
    """Decoded, usable images with their labels; everything left out is in `skipped` with a reason."""

    images: torch.Tensor  # uint8 N x 3 x H x W; a read-only mapping of the decode cache by default
    labels: torch.Tensor  # int64 N, indexes class_names
    class_names: list[str]
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_dataset(data: str | None = None, label_col: str = "subCategory", size: tuple[int, int] | None = None,
                 cache_dir: str | None = None, workers: int = 2, log=print, cache_mode: str = "mmap",
                 exclude: str | None = None, relabel: str | None = None) -> Dataset:
    """Index `data`, decode it (or read the cache), drop undecodable files, relabel the images `relabel` lists,
    leave out those `exclude` lists (but not relabelled ones), and check it is trainable.

    Classes whose every image is undecodable disappear from class_names (labels are renumbered), so the
    model never gets an output for a class it cannot see. Raises UserError when fewer than 2 classes remain.
    """
    if data is None:
        index, images = demo_set()
        if size is not None and tuple(size) != tuple(images.shape[-2:]):
            images = torch.nn.functional.interpolate(images.float(), size=tuple(size), mode="bilinear",
                                                     antialias=True, align_corners=False)
            images = images.round().clamp(0, 255).to(torch.uint8)
        ok, reasons = np.ones(len(index.paths), dtype=bool), [""] * len(index.paths)
    else:
        index = load_index(data, label_col, log)
        if not index.paths:
            raise UserError(f"--data {data}: no usable images found ({len(index.skipped)} skipped); "
                            "check the path and the layout")
        images, ok, reasons = decode_images(index.paths, size, cache_dir, workers, log, cache_mode)

    skipped = list(index.skipped)
    bad = np.flatnonzero(~ok)
    if len(bad):
        skipped += [(index.paths[i], reasons[i]) for i in bad]
        log(f"skipped {len(bad)} undecodable image(s), e.g. "
            + ", ".join(os.path.basename(index.paths[i]) for i in bad[:5]))
        keep = np.flatnonzero(ok)  # the pixels hold these rows only
        paths = [index.paths[i] for i in keep]
        labels, class_names = _renumber(index.labels[keep], index.class_names)
    else:
        paths, labels, class_names = list(index.paths), index.labels, list(index.class_names)
    kept = np.zeros(len(paths), dtype=bool)
    if relabel:
        moved, to = relabelled(paths, class_names, relabel, log)
        labels = np.array(labels, dtype=np.int64)
        labels[moved] = to
        kept[moved] = True
        labels, class_names = _renumber(labels, class_names)  # a class every image of which moved is gone
    if exclude:
        dropped = excluded(paths, exclude, log, kept)
        if len(dropped):
            skipped += [(paths[i], f"listed in --exclude {exclude}") for i in dropped]
            keep = np.setdiff1d(np.arange(len(paths)), dropped)
            images = images[torch.as_tensor(keep)]
            paths = [paths[i] for i in keep]
            labels, class_names = _renumber(np.asarray(labels)[keep], class_names)

    if len(paths) == 0:
        raise UserError(f"--data {data}: none of the images could be decoded; see the skipped list")
    present = np.unique(labels)
    if len(present) < 2:
        raise UserError(f"--data {data}: only {len(present)} class with usable images "
                        f"({', '.join(class_names)}); a classifier needs at least 2")
    return Dataset(images=images, labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                   class_names=class_names, paths=paths, skipped=skipped)


def write_skipped(skipped: list[tuple[str, str]], path: str) -> None:
    """Write every skipped item (file or row, reason) to a JSON file, e.g. runs/<name>/skipped.json."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # ensure_ascii (json's default) writes a non-UTF-8 file name as \\udcXX escapes instead of failing
    atomic_write(path, json.dumps({"count": len(skipped),
                                   "skipped": [{"item": item, "reason": why} for item, why in skipped]}, indent=1))


def _read_csv(file: str, flag: str) -> list[list[str]]:
    import csv
    try:
        with open(file, newline="", encoding="utf-8") as fh:
            return list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{flag} {file}: cannot read ({getattr(err, 'strerror', None) or err})") from None


def _key(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def read_path_list(file: str) -> list[str]:
    """The `path` column of a CSV (the audit's files have one), or its first column when none is named so."""
    rows = _read_csv(file, "--exclude")
    if not rows:
        return []
    column = rows[0].index("path") if "path" in rows[0] else 0
    body = rows[1:] if "path" in rows[0] else rows
    return [row[column] for row in body if len(row) > column and row[column].strip()]


def excluded(paths: list[str], file: str, log=print, kept=None) -> np.ndarray:
    """Positions of `paths` listed in `file` (compared as absolute, normalised paths), but not those `kept`
    marks (relabelled by --relabel); says how many, and how many listed paths are not in the data set."""
    wanted = {_key(p) for p in read_path_list(file)}
    listed = np.array([_key(p) in wanted for p in paths], dtype=bool)
    spared = listed & (kept if kept is not None else False)
    hit = np.flatnonzero(listed & ~spared)
    missing = len(wanted) - int(listed.sum())
    log(f"--exclude {file}: {len(hit)} image(s) left out of {len(paths)}"
        + (f"; {int(spared.sum())} listed image(s) kept, relabelled by --relabel" if spared.any() else "")
        + (f"; {missing} listed path(s) are not in the data set" if missing > 0 else ""))
    return hit


def read_relabel_list(file: str) -> list[tuple[int, str, str]]:
    """(row number, path, new label) of each row of a CSV with `path` and `label` columns (the audit's
    relabel.csv). A file without them, or a row without a label, is refused with its row number."""
    rows = _read_csv(file, "--relabel")
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise UserError(f"--relabel {file}: expected a header with `path` and `label` columns (e.g. a run's "
                        "audit/relabel.csv)")
    at, to = rows[0].index("path"), rows[0].index("label")
    out = []
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(at, to) or not row[at].strip() or not row[to].strip():
            raise UserError(f"--relabel {file}: row {number} has no path or no label; every row needs both")
        out.append((number, row[at], row[to]))
    return out


def relabelled(paths: list[str], class_names: list[str], file: str, log=print) -> tuple[np.ndarray, np.ndarray]:
    """(positions, new labels) of `paths` listed in `file` (read_relabel_list); a new label must be one of
    `class_names` (relabelling cannot make a class). Says how many, and how many listed paths are not in the
    data set."""
    index = {c: i for i, c in enumerate(class_names)}
    new = {}
    for number, path, label in read_relabel_list(file):
        if label not in index:
            raise UserError(f"--relabel {file}: row {number} gives the label {label!r}, which is not a class of "
                            f"the data set ({len(class_names)} classes, e.g. {', '.join(class_names[:3])})")
        new[_key(path)] = index[label]
    keys = [_key(p) for p in paths]
    hit = np.flatnonzero([k in new for k in keys])
    missing = len(new) - len(hit)
    log(f"--relabel {file}: {len(hit)} image(s) relabelled of {len(paths)}"
        + (f"; {missing} listed path(s) are not in the data set" if missing > 0 else ""))
    return hit, np.array([new[keys[i]] for i in hit], dtype=np.int64)


def _renumber(labels: np.ndarray, class_names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Drop classes with no remaining image and renumber labels to 0..C-1 in the same (sorted) order."""
    present = np.unique(labels)
    remap = np.full(len(class_names), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    return remap[labels], [class_names[i] for i in present]

"""Where the images come from: turn a data argument into an Index (paths, integer labels, class names).

Four sources, chosen by what `data` points at:
  None                      -> the built-in demo set (scikit-learn digits, made long-tailed; no files)
  a dir with styles.csv     -> the Kaggle Fashion Product Images layout (images/<id>.jpg)
  a .csv file               -> a manifest with columns path,label (relative paths are relative to the csv)
  any other dir             -> one sub-folder per class

Nothing is dropped silently: every row or file left out is listed in Index.skipped with a reason, and the
count is logged.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from imgcls.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# The demo set: digits made long-tailed with an exponential profile (Cui et al. 2019, "long-tailed CIFAR").
DEMO_IMBALANCE = 100
DEMO_SEED = 0
DEMO_SIZE = 32


@dataclass
class Index:
    """The labelled file list of a data set, before any pixel is decoded."""

    paths: list[str]
    labels: np.ndarray  # int64, one per path, indexes class_names
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or row, reason)


def load_index(data: str | None, label_col: str = "subCategory", log=print) -> Index:
    """Read the file list and labels of `data` (see the module docstring for the four layouts)."""
    if data is None:
        index, _ = demo_set()
        return index
    if not os.path.exists(data):
        raise UserError(f"--data {data}: no such file or directory; give a folder of images or a .csv manifest")
    # Absolute paths: the cache key and a saved split must not depend on how the path was spelled.
    data = os.path.abspath(data)
    if os.path.isdir(data) and os.path.isfile(os.path.join(data, "styles.csv")):
        index = _kaggle_index(data, label_col)
    elif os.path.isfile(data) and data.lower().endswith(".csv"):
        index = _manifest_index(data)
    elif os.path.isdir(data):
        index = _folder_index(data)
    else:
        raise UserError(f"--data {data}: not a folder or a .csv manifest; give one of those")
    if index.skipped:
        by_reason = Counter(why for _, why in index.skipped)
        log(f"{data}: skipped {len(index.skipped)} item(s) ("
            + ", ".join(f"{n} {why}" for why, n in by_reason.most_common()) + "), e.g. "
            + "; ".join(f"{item}: {why}" for item, why in index.skipped[:3]))
    log(f"{data}: {len(index.paths)} images in {len(index.class_names)} classes")
    return index


def _build_index(items: list[tuple[str, str]], skipped: list[tuple[str, str]]) -> Index:
    """(path, label name) pairs -> Index with classes sorted by name, so the mapping is reproducible."""
    class_names = sorted({label for _, label in items})
    to_id = {name: i for i, name in enumerate(class_names)}
    return Index(
        paths=[path for path, _ in items],
        labels=np.array([to_id[label] for _, label in items], dtype=np.int64),
        class_names=class_names,
        skipped=skipped,
    )


def _kaggle_index(root: str, label_col: str) -> Index:
    """Kaggle layout: styles.csv (id, ..., label_col, ...) and images/<id>.jpg.

    Some rows have an unquoted comma inside the last column (productDisplayName) and so carry 11 or 12
    fields instead of 10; the extra fields belong to that last column, so the columns before it, and the
    label, are still where the header says.
    """
    csv_path = os.path.join(root, "styles.csv")
    image_dir = os.path.join(root, "images")
    existing = set(os.listdir(image_dir)) if os.path.isdir(image_dir) else set()
    items, skipped = [], []
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise UserError(f"{csv_path}: empty file; it needs a header row with id and {label_col}")
        header = [h.strip() for h in header]
        for col in ("id", label_col):
            if col not in header:
                raise UserError(f"{csv_path}: no column '{col}' (columns: {', '.join(header)}); "
                                "pick another --label-col")
        id_at, label_at = header.index("id"), header.index(label_col)
        needed = max(id_at, label_at) + 1
        for row_no, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"styles.csv row {row_no}"
            if len(row) < needed:
                skipped.append((where, f"only {len(row)} fields, needs {needed}"))
                continue
            image_id, label = row[id_at].strip(), row[label_at].strip()
            if not label:
                skipped.append((where, f"empty {label_col}"))
                continue
            name = f"{image_id}.jpg"
            if name not in existing:
                skipped.append((f"{where} (images/{name})", "no image file"))
                continue
            items.append((os.path.join(image_dir, name), label))
    return _build_index(items, skipped)


def _manifest_index(csv_path: str) -> Index:
    """A csv with columns path,label; relative paths are taken relative to the csv's folder."""
    base = os.path.dirname(csv_path)
    items, skipped = [], []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in columns or "label" not in columns:
            raise UserError(f"{csv_path}: needs columns 'path' and 'label' (found: {', '.join(columns)}); "
                            "add a header row path,label")
        reader.fieldnames = columns
        for row_no, row in enumerate(reader, start=2):
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            where = f"{os.path.basename(csv_path)} row {row_no}"
            if not path or not label:
                skipped.append((where, "empty path or label"))
                continue
            full = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
            if not os.path.isfile(full):
                skipped.append((f"{where} ({path})", "no image file"))
                continue
            items.append((full, label))
    return _build_index(items, skipped)


def _folder_index(root: str) -> Index:
    """One sub-folder per class; image files inside it (searched recursively), sorted for reproducibility."""
    items, skipped = [], []
    for class_name in sorted(os.listdir(root)):
        class_dir = os.path.join(root, class_name)
        if not os.path.isdir(class_dir) or class_name.startswith("."):
            continue
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if name.startswith("."):
                    continue
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    items.append((path, class_name))
                else:
                    skipped.append((path, "not an image file extension"))
    if not items:
        raise UserError(f"{root}: no class sub-folders with images; expected {root}/<class>/<image>.jpg, "
                        "a styles.csv, or a .csv manifest")
    return _build_index(items, skipped)


def demo_set() -> tuple[Index, torch.Tensor]:
    """The built-in demo set: scikit-learn's 8x8 digits, long-tailed, as 32x32 RGB uint8 images.

    Class c keeps round(n_max * (1/100) ** (c / 9)) of its images (at least one), chosen with a fixed seed,
    so digit 0 is the head class and digit 9 has 1-2 images: the same shape of problem as the real data,
    small enough for a CPU test run.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels_all = digits.target.astype(np.int64)
    num_classes = int(labels_all.max()) + 1
    n_max = int(np.bincount(labels_all).min())
    rng = np.random.default_rng(DEMO_SEED)
    keep = []
    for c in range(num_classes):
        members = np.flatnonzero(labels_all == c)
        n_keep = max(1, round(n_max * DEMO_IMBALANCE ** (-c / (num_classes - 1))))
        keep.extend(sorted(rng.choice(members, size=n_keep, replace=False).tolist()))
    keep = np.array(keep, dtype=np.int64)
    # Pixel values are 0..16; bilinear upsampling keeps them in range, so the uint8 cast below is safe.
    small = torch.from_numpy(digits.images[keep]).float().unsqueeze(1) * (255.0 / 16.0)
    big = F.interpolate(small, size=(DEMO_SIZE, DEMO_SIZE), mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = labels_all[keep]
    index = Index(
        paths=[f"demo/digit_{lab}_{i:06d}" for lab, i in zip(labels.tolist(), keep.tolist())],
        labels=labels,
        class_names=[f"digit_{c}" for c in range(num_classes)],
        skipped=[],
    )
    return index, images

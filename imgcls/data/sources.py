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
import io
import os
import stat
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
    try:
        existing = set(os.listdir(image_dir)) if os.path.isdir(image_dir) else set()
    except OSError as err:
        raise UserError(f"{image_dir}: cannot list the folder ({err.strerror}); check its permissions") from None
    items, skipped = [], []
    first_row: dict[str, tuple[int, str]] = {}  # id -> (row, label) of its first occurrence
    rows = csv_rows(csv_path)
    if not rows or not rows[0][1]:
        raise UserError(f"{csv_path}: empty file; it needs a header row with id and {label_col}")
    header = [h.strip() for h in rows[0][1]]
    for col in ("id", label_col):
        if col not in header:
            raise UserError(f"{csv_path}: no column '{col}' (columns: {', '.join(header)}); "
                            "pick another --label-col")
    id_at, label_at = header.index("id"), header.index(label_col)
    needed = max(id_at, label_at) + 1
    for row_no, row in rows[1:]:
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
        if image_id in first_row:
            skipped.append(_duplicate(f"{where} (id {image_id})", first_row[image_id], label))
            continue
        first_row[image_id] = (row_no, label)
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
    first_row: dict[str, tuple[int, str]] = {}  # real path -> (row, label) of its first occurrence
    columns, rows = manifest_rows(csv_path)
    if "path" not in columns or "label" not in columns:
        raise UserError(f"{csv_path}: needs columns 'path' and 'label' (found: {', '.join(columns)}); "
                        "add a header row path,label")
    for row_no, row in rows:
        path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        where = f"{os.path.basename(csv_path)} row {row_no}"
        if not path or not label:
            skipped.append((where, "empty path or label"))
            continue
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
        if not os.path.exists(full):
            skipped.append((f"{where} ({path})", "no image file"))
            continue
        same = os.path.realpath(full)  # the same file spelled twice (./a.png, a.png, a symlink)
        if same in first_row:
            skipped.append(_duplicate(f"{where} ({path})", first_row[same], label))
            continue
        first_row[same] = (row_no, label)
        if not _is_regular(full):
            skipped.append((f"{where} ({path})", NOT_REGULAR))
            continue
        items.append((full, label))
    return _build_index(items, skipped)


# A long free-text column (a product description) may exceed the csv module's default 131,072 characters
# per field, which would stop the whole data set with csv.Error; a field is only ever kept as a string.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def csv_rows(csv_path: str) -> list[tuple[int, list[str]]]:
    """[(line number, fields)] of a CSV (UTF-8 with or without a BOM; the header is line 1). A quote that is
    opened and never closed would swallow the rows after it into one field and train on what is left: it is
    refused here, naming the row and how many lines it ate. Label and path CSVs have no multi-line fields."""
    reader = csv.reader(io.StringIO(read_csv_text(csv_path), newline=""))
    rows, line = [], 1
    try:
        for fields in reader:
            if reader.line_num > line and any("\n" in f or "\r" in f for f in fields):
                raise UserError(f"{csv_path}: row {line} opens a quote (\") that is not closed before line "
                                f"{reader.line_num}, so {reader.line_num - line + 1} lines were read as one row; "
                                "close or remove the quote (a quote inside a field is written \"\")")
            rows.append((line, fields))
            line = reader.line_num + 1
    except csv.Error as err:
        raise UserError(f"{csv_path}: row {reader.line_num} cannot be read as CSV ({err}); fix that row") from None
    return rows


def manifest_rows(csv_path: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(column names, [(row number, row dict)]) of a .csv manifest: UTF-8 with or without a BOM, header names
    stripped of spaces, rows numbered as a spreadsheet shows them (the header is row 1)."""
    rows = csv_rows(csv_path)
    if not rows:
        return [], []
    columns = [c.strip() for c in rows[0][1]]
    return columns, [(row_no, dict(zip(columns, fields))) for row_no, fields in rows[1:] if fields]


def unlabeled_manifest(csv_path: str) -> tuple[list[str], list[tuple[str, str]]] | None:
    """(paths, skipped) of a path-only manifest (a `path` column, no `label` column); None for a labelled one.
    Relative paths are taken relative to the csv's folder, as in a labelled manifest."""
    columns, rows = manifest_rows(csv_path)
    if "path" not in columns or "label" in columns:
        return None
    base, paths, skipped = os.path.dirname(csv_path), [], []
    for row_no, row in rows:
        path = (row.get("path") or "").strip()
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
        if path and os.path.isfile(full):
            paths.append(full)
        else:
            skipped.append((f"{os.path.basename(csv_path)} row {row_no} ({path})",
                            "empty path" if not path else "no image file"))
    return paths, skipped


def walk_files(folder: str, onerror=None):
    """Every file under `folder` (recursively) as (path, name), sorted; hidden files and folders left out."""
    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name), name


def list_images(folder) -> list[str]:
    """Image files under `folder` (by extension), recursively, sorted; hidden files and folders left out."""
    return [path for path, name in walk_files(str(folder)) if name.lower().endswith(IMAGE_EXTENSIONS)]


def _folder_index(root: str) -> Index:
    """One sub-folder per class; image files inside it (searched recursively), sorted for reproducibility.

    A folder that cannot be listed (no permission) is listed in skipped, like an undecodable image: silently
    walking past it would drop a whole class without a word.
    """
    items, skipped = [], []

    def unreadable(err: OSError) -> None:
        skipped.append((err.filename or "?", f"unreadable folder: {err.strerror or err}"))

    try:
        class_names = sorted(os.listdir(root))
    except OSError as err:
        raise UserError(f"--data {root}: cannot list the folder ({err.strerror}); check its permissions") from None
    first_dir: dict[str, str] = {}    # real folder -> the class that reached it first
    first_file: dict[str, str] = {}   # real file -> the class that reached it first
    for class_name in class_names:
        class_dir = os.path.join(root, class_name)
        if class_name.startswith("."):
            continue
        if not os.path.isdir(class_dir):
            if class_name.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append((class_dir, TOP_LEVEL))
            continue
        real = os.path.realpath(class_dir)
        if real in first_dir:  # a symlink or another name for a folder already read: same images, two labels
            skipped.append((class_dir, f"the same folder as class {first_dir[real]!r} (a link to it): not read "
                                       "twice under two labels"))
            continue
        first_dir[real] = class_name
        for path, name in walk_files(class_dir, onerror=unreadable):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append((path, "not an image file extension"))
            elif not _is_regular(path):
                skipped.append((path, NOT_REGULAR))
            elif (same := os.path.realpath(path)) in first_file:
                skipped.append((path, f"the same file as one in class {first_file[same]!r} (a link): kept there"))
            else:
                first_file[same] = class_name
                items.append((path, class_name))
    if not items:
        raise UserError(f"{root}: no class sub-folders with images; expected {root}/<class>/<image>.jpg, "
                        "a styles.csv, or a .csv manifest"
                        + (f" ({len(skipped)} item(s) unreadable or skipped, e.g. {skipped[0][0]}: "
                           f"{skipped[0][1]})" if skipped else ""))
    return _build_index(items, skipped)


TOP_LEVEL = "an image at the top level, not in a class folder: no label, not used"
NOT_REGULAR = "not a regular file (a folder, FIFO, device or socket): not opened"
DUPLICATE = "duplicate of an earlier row (kept the first)"
DUPLICATE_CONFLICT = "duplicate id with a different label (kept the first)"


def _is_regular(path: str) -> bool:
    """True for a regular file (following symlinks); a FIFO would block the decoder on open forever."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # unreadable or vanished: let the decoder report it like any undecodable file
        return True


def _duplicate(where: str, first: tuple[int, str], label: str) -> tuple[str, str]:
    """The skipped entry for a repeated id/path; the first occurrence is the one kept.

    Keeping the first even when the labels conflict (rather than refusing the whole data set): one bad row
    must not block training on thousands of good ones, and keeping both would put the same image in train and
    test with two labels. Which label is right cannot be known from the CSV, so the conflict gets its own
    reason in skipped.json and in the summary line, where the user sees it.
    """
    first_row, first_label = first
    reason = DUPLICATE if label == first_label else DUPLICATE_CONFLICT
    detail = f"first at row {first_row}" + ("" if label == first_label else f" as {first_label!r}, here {label!r}")
    return (f"{where}, {detail}", reason)


def read_csv_text(csv_path: str) -> str:
    """The text of a CSV: UTF-8 with or without a BOM (Excel writes one); else one error naming the row."""
    try:
        with open(csv_path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise UserError(f"{csv_path}: cannot read ({err.strerror}); check the path and its permissions") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise UserError(f"{csv_path}: row {line} is not UTF-8 (byte 0x{raw[err.start]:02x}); save the file as "
                        "UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


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

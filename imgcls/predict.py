"""predict.py's work, on top of the Python API (imgcls.api): one code path for both.

Checkpoints -> Classifier (fold ensemble, TTA views, or the int8 model) -> images (the run's own held-out
test split by default; a labelled data set; or unlabelled files, folders and path-only manifests) ->
probabilities -> optional logit adjustment -> predictions.csv, and metrics when labels are known.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import api
from .api import Member, build_model, find_checkpoints, list_images, load_members  # noqa: F401 (re-exported)
from .data import load_dataset, write_skipped
from .data.sources import IMAGE_EXTENSIONS
from .data.splits import load_split
from .errors import UserError
from .fsio import atomic_write, clean_stale_temps
from .metrics import classification_metrics, per_class_report
from .plots import plot_confusion

PRINT_AT_MOST = 20  # a console line per image up to this many images (or always with --print)


def unlabeled_source(data: str, class_names) -> tuple[list[str], list[tuple[str, str]]] | None:
    """(paths, skipped) when `data` is unlabelled: a manifest with a `path` column and no `label` column, or a
    folder without styles.csv none of whose sub-folders is named after a class (searched recursively).
    None for the labelled layouts, which load_dataset reads."""
    if data.lower().endswith(".csv") and os.path.isfile(data):
        with open(data, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in columns or "label" in columns:
                return None
            reader.fieldnames = columns
            base, paths, skipped = os.path.dirname(data), [], []
            for row_no, row in enumerate(reader, start=2):
                path = (row.get("path") or "").strip()
                full = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
                if path and os.path.isfile(full):
                    paths.append(full)
                else:
                    skipped.append((f"{os.path.basename(data)} row {row_no} ({path})",
                                    "empty path" if not path else "no image file"))
        return paths, skipped
    if os.path.isdir(data) and not os.path.isfile(os.path.join(data, "styles.csv")):
        subdirs = {d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d))}
        if subdirs & set(class_names):
            return None
        return list_images(Path(data)), []
    return None


def select_images(args, clf: api.Classifier, log=print):
    """-> (images uint8 N3HW, paths, labels (int64 in the model's class order, or None), skipped)."""
    members = clf.members
    record = members[0].record
    cfg = record.config
    if args.images or (args.data and unlabeled_source(args.data, clf.classes) is not None):
        if args.images:
            files = [p for item in args.images for p in (list_images(Path(item)) if os.path.isdir(item) else [item])]
            if not files:
                raise UserError(f"--images {' '.join(args.images)}: no image files "
                                f"({', '.join(IMAGE_EXTENSIONS)}) there")
            skipped = []
        else:
            files, skipped = unlabeled_source(args.data, clf.classes)
            if not files:
                raise UserError(f"--data {args.data}: no images to predict"
                                + (f" ({len(skipped)} rows without an image file, e.g. {skipped[0][0]})"
                                   if skipped else ""))
            log(f"{args.data}: no labels (no class folders / label column): predicting {len(files)} images")
        images = clf.images(files, workers=args.workers, log=log)
        return images.pixels, images.sources, None, skipped + images.skipped
    cache_dir = args.cache_dir or cfg.get("cache_dir")
    data_arg = args.data if args.data else cfg.get("data")
    dataset = load_dataset(data_arg, label_col=args.label_col or cfg.get("label_col", "subCategory"),
                           size=clf.storage_size, cache_dir=cache_dir, workers=args.workers, log=log)
    labels = _map_labels(dataset.class_names, clf.classes, dataset.labels.numpy(), data_arg)
    positions = np.arange(len(dataset.paths))
    if not args.data:  # the run's own data: use its split
        split = load_split(str(members[0].path.parent / "split.json"), dataset.paths)
        if args.split == "test":
            positions = np.asarray(split["test"], dtype=np.int64)
        elif args.split == "val":
            if len(members) > 1:
                raise UserError("--split val: each fold has its own validation set; pick one with --fold K")
            positions = np.asarray(split["folds"][record.fold]["val"], dtype=np.int64)
            if cfg.get("refit"):
                log(f"warning: {members[0].path.parent} was refitted on train + validation (--refit): "
                    "these validation images were trained on, so their scores are not held-out ones")
    sel = torch.as_tensor(positions)
    return dataset.images[sel], [dataset.paths[i] for i in positions], labels[positions], dataset.skipped


def _map_labels(data_classes, model_classes, labels, data_arg) -> np.ndarray:
    unknown = sorted(set(data_classes) - set(model_classes))
    if unknown:
        raise UserError(f"{data_arg}: classes {unknown[:5]}{' ...' if len(unknown) > 5 else ''} are not among "
                        f"the model's {len(model_classes)} classes; predict on data with the training label "
                        f"set (same --label-col), or pass unlabelled images with --images")
    where = {name: i for i, name in enumerate(model_classes)}
    lookup = np.array([where[name] for name in data_classes], dtype=np.int64)
    return lookup[labels]


def load_classifier(args, log=print) -> api.Classifier:
    source = args.checkpoint if args.checkpoint else args.run
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UserError(f"--checkpoint {args.checkpoint}: file not found")
    clf = api.load(source, fold="all" if args.checkpoint else args.fold, tta=args.tta, views=args.views,
                   device=args.device, batch_size=args.batch_size, amp=args.amp,
                   int8=getattr(args, "int8", False), logit_adjust=args.logit_adjust, log=log)
    for member in clf.members:
        warn_if_unfinished(member.path, log)
    return clf


def warn_if_unfinished(path: Path, log=print) -> None:
    """One line when a checkpoint comes from a fold whose training has not finished (killed or still running).

    train.py writes the fold's metrics.json only at the end; a last.pt without it means best.pt is only the
    best epoch so far, and the numbers from it are not the run's.
    """
    fold_dir = path.parent
    if (fold_dir / "last.pt").is_file() and not (fold_dir / "metrics.json").is_file():
        log(f"warning: {fold_dir}: training has not finished (no metrics.json); {path.name} is the best epoch "
            "so far, not the run's result (rerun train.py to finish it)")


def output_paths(args, clf: api.Classifier) -> tuple[Path, Path]:
    """(predictions.csv, folder for its companions). --out FILE.csv puts them into FILE/ beside it; the
    default RUN/predict-<source>[-tta]/ folder holds both."""
    if args.out:
        out_csv = Path(args.out)
        if out_csv.suffix.lower() != ".csv":
            raise UserError(f"--out {args.out}: give a .csv file name (its companions go to a folder named after it)")
        return out_csv, out_csv.with_suffix("")
    member = clf.members[0]
    base = member.path.parent if args.checkpoint else member.path.parent.parent
    source = "images" if args.images else ("data" if args.data else args.split)
    folder = base / f"predict-{source}{'-tta' if clf.tta else ''}{'-int8' if clf.int8_model else ''}"
    return folder / "predictions.csv", folder


def predict(args, log=print) -> dict:
    clf = load_classifier(args, log)
    images, paths, labels, skipped = select_images(args, clf, log)
    if len(paths) == 0:
        what = ", ".join(p for p, _ in skipped[:3])
        raise UserError(f"no readable images to predict{f' (unreadable: {what})' if what else ''}")
    kind = f"int8 model {clf.int8_model}" if clf.int8_model else f"{len(clf.members)} model(s) on {clf.device}"
    log(f"predicting {len(paths)} images with {kind} x {len(clf.views)} view(s) ({', '.join(clf.views)})")
    probs = clf.probabilities(images, progress=lambda batches, member: tqdm(
        batches, desc=f"predict {member.path.parent.name}", unit="batch", leave=False,
        disable=not sys.stderr.isatty()))
    if any(clf.taus):
        log(f"decision rule: logit adjustment tau {', '.join(f'{t:+.1f}' for t in clf.taus)} "
            f"({'--logit-adjust' if args.logit_adjust is not None else 'chosen in training'})")
    if not np.isfinite(probs).all():  # never write NaN as predictions (and overwrite good ones with them)
        raise UserError(f"{clf.members[0].path}: the model gives non-finite probabilities for "
                        f"{int((~np.isfinite(probs).all(1)).sum())} image(s); nothing was written")

    out_csv, companions = output_paths(args, clf)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out_csv.parent)
    write_predictions(out_csv, paths, probs, clf.classes, labels)
    if getattr(args, "print", False) or len(paths) <= PRINT_AT_MOST:
        for pred in clf.decide(probs, paths, top_k=1):
            log(f"{pred.source}\t{pred.label}\t{pred.probability:.4f}")
    result = {"predictions": str(out_csv), "num_images": len(paths), "skipped": len(skipped),
              "folder": str(companions)}
    skipped_json = companions / "skipped.json"
    if not skipped:  # a skipped.json from an earlier predict here would describe other inputs
        skipped_json.unlink(missing_ok=True)
    else:
        companions.mkdir(parents=True, exist_ok=True)
        write_skipped(skipped, str(skipped_json))
        log(f"skipped {len(skipped)} input(s) (missing or unreadable), e.g. {skipped[0][0]} ({skipped[0][1]}); "
            f"all listed in {companions / 'skipped.json'}")
    if labels is not None:
        companions.mkdir(parents=True, exist_ok=True)
        metrics = classification_metrics(labels, probs.argmax(1), clf.classes)
        metrics.update(views=list(clf.views), models=[str(m.path) for m in clf.members], split=args.split,
                       logit_adjust=clf.taus, int8=bool(clf.int8_model),
                       train_time_s=sum(_train_time(m) for m in clf.members),
                       peak_memory_mb=max(_peak_memory(m) for m in clf.members))
        atomic_write(companions / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        atomic_write(companions / "report.txt", per_class_report(metrics, clf.classes) + "\n")
        plot_confusion(metrics["confusion_matrix"], clf.classes, companions / "confusion.png")
        log(f"accuracy {metrics['accuracy']:.4f} macro_f1 {metrics['macro_f1']:.4f} "
            f"weighted_f1 {metrics['weighted_f1']:.4f} balanced_acc {metrics['balanced_accuracy']:.4f}")
        result["metrics"] = metrics
    log(f"wrote {out_csv}" + (f" (and metrics, report, confusion in {companions})"
                              if labels is not None and companions != out_csv.parent else ""))
    return result


def _fold_metrics(member: Member) -> dict:
    path = member.path.parent / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _train_time(member: Member) -> float:
    return float(_fold_metrics(member).get("train_time_s", 0.0))


def _peak_memory(member: Member) -> float:
    return float(_fold_metrics(member).get("peak_memory_mb", 0.0))


def write_predictions(path: Path, paths, probs: np.ndarray, class_names, labels=None, top: int = 5) -> None:
    top = min(top, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    header = ["id", "path", "label", "confidence"]
    for k in range(1, top + 1):
        header += [f"top{k}", f"top{k}_prob"]
    if labels is not None:
        header.append("true_label")
    fh = io.StringIO(newline="")
    writer = csv.writer(fh, lineterminator="\n")  # LF everywhere (csv's default is CRLF)
    writer.writerow(header)
    for i, p in enumerate(paths):
        row = [Path(p).stem, p, class_names[order[i, 0]], f"{probs[i, order[i, 0]]:.6f}"]
        for c in order[i]:
            row += [class_names[c], f"{probs[i, c]:.6f}"]
        if labels is not None:
            row.append(class_names[labels[i]])
        writer.writerow(row)
    # surrogateescape: a file name that is not valid UTF-8 is written back as the bytes it has on disk
    atomic_write(path, fh.getvalue().encode("utf-8", "surrogateescape"))

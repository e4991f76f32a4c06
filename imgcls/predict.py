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
from .data import write_skipped
from .data.sources import IMAGE_EXTENSIONS, list_images, unlabeled_manifest
from .run import CONFUSION, METRICS, PREDICTIONS, SKIPPED, prediction_folder, run_data
from .errors import UserError
from .fsio import atomic_write, clean_stale_temps
from .metrics import calibration, classification_metrics, per_class_report
from .plots import plot_confusion
from .report import misses, write_report
from .validate import check_out_file

PRINT_AT_MOST = 20  # a console line per image up to this many images (or always with --print)


def unlabeled_source(data: str, class_names) -> tuple[list[str], list[tuple[str, str]]] | None:
    """(paths, skipped) when `data` is unlabelled: a manifest with a `path` column and no `label` column, or a
    folder without styles.csv none of whose sub-folders is named after a class (searched recursively).
    None for the labelled layouts, which load_dataset reads."""
    if data.lower().endswith(".csv") and os.path.isfile(data):
        return unlabeled_manifest(data)
    if os.path.isdir(data) and not os.path.isfile(os.path.join(data, "styles.csv")):
        subdirs = {d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d))}
        if subdirs & set(class_names):
            return None
        return list_images(data), []
    return None


def select_images(args, clf: api.Classifier, log=print):
    """-> (images uint8 N3HW, paths, labels (int64 in the model's class order, or None), skipped)."""
    members = clf.members
    cfg = members[0].config
    if args.images or (args.data and unlabeled_source(args.data, clf.classes) is not None):
        if args.images:
            files = [p for item in args.images for p in (list_images(item) if os.path.isdir(item) else [item])]
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
    dataset, positions = run_data(members, "all" if args.data else args.split, data=args.data,
                                  label_col=args.label_col, cache_dir=args.cache_dir, workers=args.workers,
                                  size=clf.storage_size, log=log)
    labels = _map_labels(dataset.class_names, clf.classes, dataset.labels.numpy(), args.data or cfg.data)
    if args.split == "val" and not args.data and cfg.refit:
        log(f"warning: {members[0].folder} was refitted on train + validation (--refit): "
            "these validation images were trained on, so their scores are not held-out ones")
    sel = torch.as_tensor(positions)
    if args.data:  # another data set: what it could not read is part of what was asked
        return dataset.images[sel], [dataset.paths[i] for i in positions], labels[positions], dataset.skipped
    # The run's own data: the rows without a readable image were never in its split (training listed them
    # once, in the fold's skipped.json); none of the images asked for here was skipped.
    if dataset.skipped:
        log(f"note: {len(dataset.skipped)} row(s) of the run's data have no readable image and are in no split "
            f"(listed by training in {members[0].folder / SKIPPED})")
    return dataset.images[sel], [dataset.paths[i] for i in positions], labels[positions], []


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
                   int8=getattr(args, "int8", False), decision_tau=args.decision_tau, log=log)
    return clf


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
    folder = prediction_folder(base, source, clf.tta, bool(clf.int8_model))
    return folder / PREDICTIONS, folder


def predict(args, log=print) -> dict:
    clf = load_classifier(args, log)
    out_csv, companions = output_paths(args, clf)
    if not args.out:  # --out was checked with the flags; the default folder is known now, before any work
        try:
            check_out_file("--out", str(out_csv))
        except UserError as err:
            raise UserError(f"the default output {out_csv} cannot be written ({str(err).split(': ', 1)[-1]}); "
                            f"pass --out FILE.csv somewhere writable") from None
    images, paths, labels, skipped = select_images(args, clf, log)
    if len(paths) == 0:
        what = ", ".join(p for p, _ in skipped[:3])
        raise UserError(f"no readable images to predict{f' (unreadable: {what})' if what else ''}")
    kind = f"int8 model {clf.int8_model}" if clf.int8_model else f"{len(clf.members)} model(s) on {clf.device}"
    log(f"predicting {len(paths)} images with {kind} x {len(clf.views)} view(s) ({', '.join(clf.views)})")
    probs = clf.probabilities(images, progress=lambda batches, member: tqdm(
        batches, desc=f"predict {member.path.parent.name}", unit="batch", leave=False,
        disable=not sys.stderr.isatty()))
    if any(clf.decision_taus):
        log(f"decision rule: tau {', '.join(f'{t:+.1f}' for t in clf.decision_taus)} "
            f"({'--decision-tau' if args.decision_tau is not None else 'stored with the model'})")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out_csv.parent)
    write_predictions(out_csv, paths, probs, clf.classes, labels)
    if getattr(args, "print", False) or len(paths) <= PRINT_AT_MOST:
        for pred in clf.decide(probs, paths, top_k=1):
            log(f"{pred.source}\t{pred.label}\t{pred.probability:.4f}")
    result = {"predictions": str(out_csv), "num_images": len(paths), "skipped": len(skipped),
              "folder": str(companions)}
    skipped_json = companions / SKIPPED
    if not skipped:  # a skipped.json from an earlier predict here would describe other inputs
        skipped_json.unlink(missing_ok=True)
    else:
        companions.mkdir(parents=True, exist_ok=True)
        write_skipped(skipped, str(skipped_json))
        log(f"skipped {len(skipped)} input(s) (missing or unreadable), e.g. {skipped[0][0]} ({skipped[0][1]}); "
            f"all listed in {companions / SKIPPED}")
    if labels is not None:
        companions.mkdir(parents=True, exist_ok=True)
        metrics = classification_metrics(labels, probs.argmax(1), clf.classes)
        # of the probabilities predictions.csv holds: after each member's decision tau, when it has one
        taus = clf.decision_taus
        metrics["calibration"] = dict(calibration(probs, labels), of="probabilities after the decision tau "
                                      f"{', '.join(f'{t:+.1f}' for t in taus)}" if any(taus) else
                                      "the model's probabilities")
        metrics.update(views=list(clf.views), models=[str(m.path) for m in clf.members], split=args.split,
                       decision_taus=taus, int8=bool(clf.int8_model),
                       train_time_s=sum(float(m.metrics().get("train_time_s", 0.0)) for m in clf.members),
                       peak_memory_mb=max(float(m.metrics().get("peak_memory_mb", 0.0)) for m in clf.members))
        atomic_write(companions / METRICS, json.dumps(metrics, indent=2) + "\n")
        atomic_write(companions / "report.txt", per_class_report(metrics, clf.classes) + "\n")
        plot_confusion(metrics["confusion_matrix"], clf.classes, companions / CONFUSION)
        counts = clf.members[0].record.train_class_counts
        write_report(companions, title=f"predictions: {out_csv}", metrics=dict(metrics, split=args.split),
                     class_names=clf.classes, train_counts=counts,
                     pngs={"Confusion matrix": companions / CONFUSION},
                     gallery_html=misses(images, probs, labels, clf.classes, counts, paths))
        log(f"accuracy {metrics['accuracy']:.4f} macro_f1 {metrics['macro_f1']:.4f} "
            f"weighted_f1 {metrics['weighted_f1']:.4f} balanced_acc {metrics['balanced_accuracy']:.4f}")
        result["metrics"] = metrics
    log(f"wrote {out_csv}" + (f" (and metrics, report, confusion in {companions})"
                              if labels is not None and companions != out_csv.parent else ""))
    return result


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

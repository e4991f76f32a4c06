"""Prediction with fold ensembles, TTA and post-hoc logit adjustment.

Checkpoints -> images (the run's own held-out test split by default) -> mean of class probabilities over
models and TTA views -> optional logit adjustment -> predictions.csv, and metrics when labels are known.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint
from . import distributed as dist
from .data import load_dataset, write_skipped
from .data.cache import decode_images
from .data.splits import load_split
from .errors import UserError
from .fsio import atomic_write, clean_stale_temps
from .decision import adjust as logit_adjust  # noqa: F401  (predict's name for it)
from .inference import predict_dataset, use_channels_last
from .metrics import classification_metrics, per_class_report
from .models import create_model
from .plots import plot_confusion


@dataclass
class Member:
    """One trained model of an ensemble."""
    path: Path
    record: checkpoint.Checkpoint


def find_checkpoints(run: str | None, fold: str, checkpoint_file: str | None) -> list[Path]:
    if checkpoint_file:
        path = Path(checkpoint_file)
        if not path.is_file():
            raise UserError(f"--checkpoint {path}: file not found")
        return [path]
    run_path = Path(run)
    if not run_path.is_dir():
        raise UserError(f"--run {run_path}: no such run folder; train first (python train.py --version ...) "
                        f"or point --run at OUT/<version>")
    if fold == "all":
        found = sorted(run_path.glob("fold*/best.pt"), key=lambda p: int(p.parent.name[4:]))
    else:
        found = [p for p in [run_path / f"fold{fold}" / "best.pt"] if p.is_file()]
    if not found:
        raise UserError(f"--run {run_path}: no trained fold{'s' if fold == 'all' else ' ' + fold} "
                        f"(fold*/best.pt) there; train it first or pick another --fold")
    return found


def load_members(paths: list[Path]) -> list[Member]:
    members = [Member(p, checkpoint.read(p)) for p in paths]
    first = members[0].record
    for m in members[1:]:
        for key in ("class_names", "num_classes"):
            if getattr(m.record, key) != getattr(first, key):
                raise UserError(f"{m.path}: {key} differ from {members[0].path}; ensemble only folds of one run")
        if m.record.preprocessing.storage_size != first.preprocessing.storage_size:
            raise UserError(f"{m.path}: trained at another storage size than {members[0].path}")
    return members


def build_model(member: Member, device: torch.device) -> torch.nn.Module:
    record = member.record
    model = create_model(record.model_name, record.num_classes, log=lambda *a, **k: None)  # weights follow
    try:
        model.load_state_dict(record.model)
    except RuntimeError as exc:
        raise UserError(f"{member.path}: weights do not fit {record.model_name} with "
                        f"{record.num_classes} classes ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()


def select_images(args, members: list[Member], log=print):
    """-> (images uint8 N3HW, paths, labels (int64 in the checkpoint's class order, or None), skipped)."""
    record = members[0].record
    class_names = record.class_names
    storage = tuple(record.preprocessing.storage_size)
    cfg = record.config
    cache_dir = args.cache_dir or cfg.get("cache_dir")
    if args.images:
        images, ok, reasons = decode_images(list(args.images), size=storage, cache_dir=None,
                                            workers=args.workers, log=log)
        skipped = [(p, r) for p, r, good in zip(args.images, reasons, ok) if not good]
        keep = np.flatnonzero(ok)
        return images[torch.as_tensor(keep)], [args.images[i] for i in keep], None, skipped
    data_arg = args.data if args.data else cfg.get("data")
    dataset = load_dataset(data_arg, label_col=args.label_col or cfg.get("label_col", "subCategory"),
                           size=storage, cache_dir=cache_dir, workers=args.workers, log=log)
    labels = _map_labels(dataset.class_names, class_names, dataset.labels.numpy(), data_arg)
    positions = np.arange(len(dataset.paths))
    if not args.data:  # the run's own data: use its split
        split_file = members[0].path.parent / "split.json"
        split = load_split(str(split_file), dataset.paths)
        if args.split == "test":
            positions = np.asarray(split["test"], dtype=np.int64)
        elif args.split == "val":
            if len(members) > 1:
                raise UserError("--split val: each fold has its own validation set; pick one with --fold K")
            positions = np.asarray(split["folds"][record.fold]["val"], dtype=np.int64)
    sel = torch.as_tensor(positions)
    return dataset.images[sel], [dataset.paths[i] for i in positions], labels[positions], dataset.skipped


def _map_labels(data_classes, model_classes, labels, data_arg) -> np.ndarray:
    unknown = sorted(set(data_classes) - set(model_classes))
    if unknown:
        raise UserError(f"{data_arg}: classes {unknown[:5]}{' ...' if len(unknown) > 5 else ''} are not among "
                        f"the model's {len(model_classes)} classes; predict on data with the training label "
                        f"set (same --label-col)")
    where = {name: i for i, name in enumerate(model_classes)}
    lookup = np.array([where[name] for name in data_classes], dtype=np.int64)
    return lookup[labels]


def use_tta(args, members: list[Member]) -> bool:
    """--tta / --no-tta when given, else what the run's version asks for (its config's tta)."""
    return bool(members[0].record.config.get("tta", False)) if args.tta is None else args.tta


def predict(args, log=print) -> dict:
    device = dist.local_device(args.device)
    members = load_members(find_checkpoints(args.run, args.fold, args.checkpoint))
    for member in members:
        warn_if_unfinished(member.path, log)
    class_names = members[0].record.class_names
    tta = use_tta(args, members)
    views = tuple(args.views.split(",")) if tta else ("identity",)
    images, paths, labels, skipped = select_images(args, members, log)
    if len(paths) == 0:
        raise UserError("no readable images to predict")
    log(f"predicting {len(paths)} images with {len(members)} model(s) x {len(views)} view(s) "
        f"({', '.join(views)}) on {device}")
    probs = np.zeros((len(paths), len(class_names)), dtype=np.float32)
    taus = [member_tau(args.logit_adjust, m) for m in members]
    for member, tau in zip(members, taus):
        pre = member.record.preprocessing
        model = build_model(member, device)
        member_probs = predict_dataset(model, images, np.arange(len(paths)), img_size=tuple(pre.img_size),
                                 mean=pre.mean, std=pre.std, device=device, batch_size=args.batch_size,
                                 views=views, amp=args.amp,
                                 channels_last=use_channels_last("auto", device),
                                 progress=lambda batches, name=member.path.parent.name: tqdm(
                                     batches, desc=f"predict {name}", unit="batch", leave=False,
                                     disable=not sys.stderr.isatty()))
        # each member's own decision rule (its tau, its training prior), then the ensemble mean
        probs += logit_adjust(member_probs, member.record.train_class_counts, tau) / len(members)
    if any(taus):
        log(f"decision rule: logit adjustment tau {', '.join(f'{t:+.1f}' for t in taus)} "
            f"({'--logit-adjust' if args.logit_adjust is not None else 'chosen in training'})")
    if not np.isfinite(probs).all():  # never write NaN as predictions (and overwrite good ones with them)
        raise UserError(f"{members[0].path}: the model gives non-finite probabilities for "
                        f"{int((~np.isfinite(probs).all(1)).sum())} image(s); nothing was written")

    out_csv = Path(args.out) if args.out else default_out(args, members, tta)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out_csv.parent)
    write_predictions(out_csv, paths, probs, class_names, labels)
    skipped_json = out_csv.parent / "skipped.json"
    if not skipped:  # a skipped.json from an earlier predict here would describe other inputs
        skipped_json.unlink(missing_ok=True)
    else:
        write_skipped(skipped, str(skipped_json))
        log(f"skipped {len(skipped)} input(s) (missing or unreadable), e.g. {skipped[0][0]} ({skipped[0][1]}); "
            f"all listed in {out_csv.parent / 'skipped.json'}")
    result = {"predictions": str(out_csv), "num_images": len(paths), "skipped": len(skipped)}
    if labels is not None:
        metrics = classification_metrics(labels, probs.argmax(1), class_names)
        metrics.update(views=list(views), models=[str(m.path) for m in members], split=args.split,
                       logit_adjust=taus,
                       train_time_s=sum(_train_time(m) for m in members),
                       peak_memory_mb=max(_peak_memory(m) for m in members))
        atomic_write(out_csv.parent / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        atomic_write(out_csv.parent / "report.txt", per_class_report(metrics, class_names) + "\n")
        plot_confusion(metrics["confusion_matrix"], class_names, out_csv.parent / "confusion.png")
        log(f"accuracy {metrics['accuracy']:.4f} macro_f1 {metrics['macro_f1']:.4f} "
            f"weighted_f1 {metrics['weighted_f1']:.4f} balanced_acc {metrics['balanced_accuracy']:.4f}")
        result["metrics"] = metrics
    log(f"wrote {out_csv}")
    return result


def member_tau(given: float | None, member: Member) -> float:
    """--logit-adjust when given, else the tau the run chose in training (0 for runs without one)."""
    return float(given) if given is not None else float(member.record.decision_tau)


def warn_if_unfinished(path: Path, log=print) -> None:
    """One line when a checkpoint comes from a fold whose training has not finished (killed or still running).

    train.py writes the fold's metrics.json only at the end; a last.pt without it means best.pt is only the
    best epoch so far, and the numbers from it are not the run's.
    """
    fold_dir = path.parent
    if (fold_dir / "last.pt").is_file() and not (fold_dir / "metrics.json").is_file():
        log(f"warning: {fold_dir}: training has not finished (no metrics.json); {path.name} is the best epoch "
            "so far, not the run's result (rerun train.py to finish it)")


def _fold_metrics(member: Member) -> dict:
    path = member.path.parent / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _train_time(member: Member) -> float:
    return float(_fold_metrics(member).get("train_time_s", 0.0))


def _peak_memory(member: Member) -> float:
    return float(_fold_metrics(member).get("peak_memory_mb", 0.0))


def default_out(args, members: list[Member], tta: bool) -> Path:
    base = members[0].path.parent.parent if not args.checkpoint else members[0].path.parent
    source = "images" if args.images else ("data" if args.data else args.split)
    return base / f"predict-{source}{'-tta' if tta else ''}" / "predictions.csv"


def write_predictions(path: Path, paths, probs: np.ndarray, class_names, labels=None, top: int = 5) -> None:
    top = min(top, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    header = ["id", "path", "label", "confidence"]
    for k in range(1, top + 1):
        header += [f"top{k}", f"top{k}_prob"]
    if labels is not None:
        header.append("true_label")
    fh = io.StringIO(newline="")
    writer = csv.writer(fh)
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

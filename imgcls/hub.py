"""A trained run in the layout people share weights in (the Hugging Face Hub's, which timm reads and writes):

    model.safetensors   every member's weights (keys "members.<i>.<parameter>"); tensors only, no pickle
    config.json         architecture, classes, preprocessing, TTA, and per member its decision tau and the
                        class counts of its training images (the prior the tau divides out)
    README.md           a model card: data, scores with the split they were measured on, per-class table,
                        intended use, limits, how to load

`export.py --format safetensors` writes it; `imgcls.load(folder)` reads it back into the same Classifier a run
gives (the same weights, taus and views, so the same probabilities). safetensors is an optional dependency
(`pip install safetensors`); nothing else here needs more than json.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import checkpoint
from .errors import UserError
from .run import HUB_CARD, HUB_CONFIG, HUB_WEIGHTS, METRICS, Member, test_metrics_file

WEIGHTS, CONFIG, CARD = HUB_WEIGHTS, HUB_CONFIG, HUB_CARD
HUB_FORMAT = 1  # the layout of config.json below; a reader refuses another


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("safetensors is not installed: pip install safetensors (or pip install 'imgcls[hub]')"
                        ) from None
    return safetensors.torch


def check_available() -> None:
    _safetensors()


def prefix(i: int) -> str:
    return f"members.{i}."


def is_hub_folder(path: str | Path) -> bool:
    """A folder written by export.py --format safetensors (a run's fold folders have no model.safetensors)."""
    return Path(path).is_dir() and (Path(path) / WEIGHTS).is_file()


def hub_config(members: list[Member], views, taus) -> dict:
    """config.json: what a reader needs to rebuild and use every member, in plain JSON."""
    record = members[0].record
    return {
        "library_name": "imgcls", "imgcls_hub_format": HUB_FORMAT,
        "architecture": record.model_name, "num_classes": record.num_classes,
        "class_names": list(record.class_names),
        "preprocessing": record.preprocessing.to_dict(),
        "tta": {"enabled": tuple(views) != ("identity",), "views": list(views)},
        "members": [{"weights_prefix": prefix(i), "fold": m.record.fold, "selected": m.record.selected,
                     "epoch": m.record.epoch, "decision_tau": float(tau),
                     "train_class_counts": [int(c) for c in m.record.train_class_counts]}
                    for i, (m, tau) in enumerate(zip(members, taus))],
        "training_config": members[0].record.config,
    }


def weights(members: list[Member]) -> dict:
    """Every member's state_dict under its own prefix, as contiguous tensors that own their memory
    (safetensors refuses views and shared storage)."""
    return {prefix(i) + name: value.detach().cpu().contiguous().clone()
            for i, m in enumerate(members) for name, value in m.record.model.items()}


def write(folder: Path, members: list[Member], views, taus, card: str) -> list[str]:
    """Write the three files into `folder` (an existing, empty staging folder); returns their names."""
    _safetensors().save_file(weights(members), str(folder / WEIGHTS), metadata={"format": "pt", "library": "imgcls"})
    return [WEIGHTS, *write_card(folder, members, views, taus, card)]


def write_card(folder: Path, members: list[Member], views, taus, card: str) -> list[str]:
    """config.json and README.md (beside any exported model)."""
    (folder / CONFIG).write_text(json.dumps(hub_config(members, views, taus), indent=2) + "\n")
    (folder / CARD).write_text(card)
    return [CONFIG, CARD]


def read_config(folder: Path) -> dict:
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read the export's config ({getattr(err, 'strerror', None) or err}); "
                        f"export the run again (export.py --format safetensors)") from None
    if not isinstance(config, dict) or config.get("imgcls_hub_format") != HUB_FORMAT:
        raise UserError(f"{path}: not an imgcls safetensors export (format {HUB_FORMAT}); export the run again")
    return config


def load_members(folder: str | Path) -> tuple[list[Member], tuple[str, ...], list[float]]:
    """(members, TTA views, decision taus) of an export folder, as Member records imgcls.load uses."""
    folder = Path(folder)
    config = read_config(folder)
    library = _safetensors()
    import safetensors
    try:
        tensors = library.load_file(str(folder / WEIGHTS))
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as err:  # truncated, or not one
        raise UserError(f"{folder / WEIGHTS}: not a readable safetensors file ({str(err).splitlines()[0]})"
                        ) from None
    pre = checkpoint.Preprocessing.from_dict(config["preprocessing"])
    members, taus = [], []
    for entry in config["members"]:
        start = entry["weights_prefix"]
        state = {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}
        if not state:
            raise UserError(f"{folder / WEIGHTS}: no weights under {start!r}, which {CONFIG} names")
        record = checkpoint.Checkpoint(
            model_name=config["architecture"], num_classes=config["num_classes"],
            class_names=list(config["class_names"]), preprocessing=pre, config=config["training_config"],
            fold=entry["fold"], train_class_counts=entry["train_class_counts"], model=state,
            epoch=entry["epoch"], metric=float("nan"), selected=entry["selected"],
            decision_tau=entry["decision_tau"])
        members.append(Member(folder / WEIGHTS, record))
        taus.append(float(entry["decision_tau"]))
    return members, tuple(config["tta"]["views"]), taus


# ---------------------------------------------------------------- the model card

def _score_rows(m: dict) -> list[str]:
    names = [("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy"),
             ("weighted_f1", "weighted-F1"), ("smallest_class_f1", "smallest-class F1")]
    return [f"| {label} | {m[key]:.4f} |" for key, label in names if isinstance(m.get(key), (int, float))]


def model_card(members: list[Member], views, taus, root: Path) -> str:
    """README.md of the export: every number is read from the run's own metrics.json files (rounded to 4
    decimals), with the split it was measured on."""
    record, cfg = members[0].record, members[0].config
    counts = members[0].record.train_class_counts
    test_file = test_metrics_file(root)
    lines = ["---", "library_name: imgcls", "pipeline_tag: image-classification",
             "tags: [image-classification, imgcls, long-tail]", "---", "",
             f"# {cfg.version} · {record.model_name} · {record.num_classes} classes", "",
             f"An image classifier trained with imgcls's preset `{cfg.version}`: "
             f"{len(members)} member(s) ({record.model_name}) whose probabilities are averaged"
             + (f", with test-time augmentation ({', '.join(views)})" if tuple(views) != ("identity",) else "")
             + ". Each member applies its own decision rule, softmax(log p - tau * log prior), before the mean.",
             "", "## Data", "",
             f"- data set: `{cfg.data or 'built-in demo (scikit-learn digits, long-tailed)'}`"
             + (f", label column `{cfg.label_col}`" if cfg.data and cfg.label_col else ""),
             f"- input: images resized to {'x'.join(map(str, record.preprocessing.storage_size))} (storage), "
             f"then {'x'.join(map(str, record.preprocessing.img_size))} for the model; mean "
             f"{list(record.preprocessing.mean)}, std {list(record.preprocessing.std)}",
             f"- classes: {record.num_classes}; training images of member 0 per class: {min(counts)} to "
             f"{max(counts)} ({sum(counts)} in all)", ""]
    lines += ["## Scores", ""]
    if test_file is not None:
        test = json.loads(test_file.read_text())
        lines += [f"On the run's held-out test split ({test.get('num_samples', '?')} images never used for a "
                  f"choice; `{test_file.relative_to(root)}`):", "", "| metric | value |", "|---|---|",
                  *_score_rows(test), ""]
    else:
        test = None
        lines += ["No test-split scores: run `predict.py --run RUN` before exporting to have them here.", ""]
    for m in members:
        fold_metrics = m.metrics()
        if fold_metrics:
            lines += [f"Member {m.record.fold} on its {'validation' if fold_metrics.get('split', 'val') == 'val' else fold_metrics['split']} split "
                      f"({fold_metrics.get('num_samples', '?')} images, where its tau "
                      f"{float(fold_metrics.get('decision_tau', 0.0)):+.2f} was chosen; "
                      f"`fold{m.record.fold}/{METRICS}`):", "", "| metric | value |", "|---|---|",
                      *_score_rows(fold_metrics), ""]
    per_class = (test or members[0].metrics() or {}).get("per_class")
    if per_class:
        lines += ["Per class (" + ("test split" if test else f"member {members[0].record.fold}'s validation split")
                  + "):", "", "| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
                  for name, v in per_class.items()]
        lines.append("")
    lines += ["## Intended use and limits", "",
              f"Classifying images like the training data into these {record.num_classes} classes. Classes with "
              "a handful of training images have scores measured on a handful of images (or none): treat their "
              "per-class numbers as noisy. Images unlike the training data (other domains, other sizes of "
              "object) are not covered by these scores. Labels are those of the data set, with its errors.", "",
              "## How to load", "", "```python", "import imgcls",
              "clf = imgcls.load(\"THIS_FOLDER\")          # the members, their taus and the TTA above",
              "print(clf.predict(\"photo.jpg\", top_k=3))", "```", "",
              "Without imgcls: `safetensors.torch.load_file(\"model.safetensors\")` gives each member's weights "
              "under `members.<i>.`; config.json holds the classes, preprocessing and decision taus.", ""]
    return "\n".join(lines)

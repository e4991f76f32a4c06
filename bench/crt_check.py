#!/usr/bin/env python3
"""A change to v5's second stage (cRT) screened on every member of bench/longtail.py's v5 runs: validation
first, then the test split.

Each v5 member keeps the model it had before cRT (foldK/before_crt.pt; stage1.pt in runs before 2026-12-06). This script extracts that model's
features once per member (its training two thirds, their horizontal mirror images, its held-out third and
the seed's test split; cached under --cache), then for each variant re-fits the classifier with the
project's own retrain_classifier, chooses tau on the member's held-out third with choose_tau, as train.py
does, and scores:
  validation  each member on its own held-out third (what a variant is chosen on; 3 members x seeds)
  test        the seed's 3-member ensemble as predict.py combines it (each member's tau, then the mean)
The preset's row re-derives what train.py produced; its validation macro-F1 is checked against each
member's metrics.json.

    python bench/crt_check.py --runs RUNS --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from common import REPO, layout, publish, spread  # noqa: E402,F401  (first: it puts the checkout on the import path)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from imgcls import checkpoint  # noqa: E402
from imgcls.data import load_dataset  # noqa: E402
from imgcls.decision import adjust, choose_tau  # noqa: E402
from imgcls.decoupling import extract_features, retrain_classifier  # noqa: E402
from imgcls.metrics import classification_metrics  # noqa: E402
from imgcls.models import create_model  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")

# name: (training features: "plain" or "flip" = plain + mirror images, retrain_classifier overrides).
# Fixed before any result; the preset is v5's cRT (square-root sampling, 600 steps, lr 0.1, weight decay 5e-4).
VARIANTS = {
    "preset": ("plain", {}),
    "mirror images too": ("flip", {}),
    "weight decay 5e-3": ("plain", {"weight_decay": 5e-3}),
    "2000 steps": ("plain", {"steps": 2000}),
    "lr 0.03": ("plain", {"lr": 0.03}),
}


def member_features(data, fold_dir: str, cache: str) -> dict:
    """Features of the member's stage-1 model (before cRT): train, train mirrored, val, test; cached."""
    if os.path.exists(cache):
        return torch.load(cache, weights_only=False)
    record = checkpoint.read(os.path.join(fold_dir, layout.BEFORE_CRT))
    split = json.load(open(os.path.join(fold_dir, layout.SPLIT)))
    fold = int(os.path.basename(fold_dir).removeprefix("fold"))
    net = create_model(record.model_name, record.num_classes, pretrained=None)
    net.load_state_dict(record.model)
    pre = record.preprocessing
    kw = dict(img_size=pre.img_size, mean=pre.mean, std=pre.std, device=torch.device("cpu"))
    idx = {"train": split["folds"][fold]["train"], "val": split["folds"][fold]["val"], "test": split["test"]}
    out = {f"{k}_idx": np.asarray(v) for k, v in idx.items()}
    for k, v in idx.items():
        out[k] = extract_features(net.eval(), data.images, v, **kw)
    mirrored = data.images[torch.as_tensor(idx["train"])].flip(-1)
    out["train_flip"] = extract_features(net, mirrored, np.arange(len(mirrored)), **kw)
    out["counts"] = np.asarray(record.train_class_counts)
    out["config"] = record.config
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    torch.save(out, cache)
    return out


def fit_and_score(f: dict, labels: np.ndarray, names, features: str, overrides: dict) -> dict:
    """The variant's head on the member: validation metrics after its tau, and its adjusted test probabilities."""
    cfg = f["config"]
    x, y = f["train"], torch.as_tensor(labels[f["train_idx"]])
    if features == "flip":
        x, y = torch.cat([x, f["train_flip"]]), torch.cat([y, y])
    preset = dict(sampler=cfg["crt_sampler"], steps=cfg["crt_steps"], batch_size=cfg["crt_batch_size"],
                  lr=cfg["crt_lr"], seed=cfg["seed"])
    head = retrain_classifier(x, y, len(names), settings=cfg, **dict(preset, **overrides))
    with torch.no_grad():
        val_p, test_p = (torch.softmax(head(f[k]), 1).numpy() for k in ("val", "test"))
    y_val = labels[f["val_idx"]]
    tau = choose_tau(val_p, y_val, f["counts"])[0]
    m = classification_metrics(y_val, adjust(val_p, f["counts"], tau).argmax(1), names)
    return {"val_f1": m["macro_f1"], "val_acc": m["accuracy"], "tau": tau,
            "test_probs": adjust(test_p, f["counts"], tau)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="bench/longtail.py's --runs (RUNS/imagenet-sS/kfold3/v5)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cache", default=None, help="feature cache (default RUNS/crt_check_features)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "crt_check.md"))
    args = p.parse_args(argv)
    cache = args.cache or os.path.join(args.runs, "crt_check_features")
    data = load_dataset(args.data, log=lambda *a, **k: None)
    labels, names = data.labels.numpy(), data.class_names
    val = {v: [] for v in VARIANTS}          # per member
    test = {v: [] for v in VARIANTS}         # per seed (ensemble)
    for seed in args.seeds:
        run = os.path.join(args.runs, f"imagenet-s{seed}", "kfold3", "v5")
        members = sorted(d for d in os.listdir(run) if d.startswith("fold"))
        probs = {v: [] for v in VARIANTS}
        for member in members:
            f = member_features(data, os.path.join(run, member), os.path.join(cache, f"s{seed}-{member}.pt"))
            for name, (features, overrides) in VARIANTS.items():
                r = fit_and_score(f, labels, names, features, overrides)
                val[name].append(r)
                probs[name].append(r["test_probs"])
            shipped = json.load(open(os.path.join(run, member, layout.METRICS)))["macro_f1"]
            print(f"seed {seed} {member}: preset val macro-F1 {val['preset'][-1]['val_f1']:.4f} "
                  f"(train.py: {shipped:.4f}); " + ", ".join(
                      f"{n} {val[n][-1]['val_f1'] - val['preset'][-1]['val_f1']:+.3f}" for n in VARIANTS
                      if n != "preset"), flush=True)
        y_test = labels[f["test_idx"]]
        for name in VARIANTS:
            m = classification_metrics(y_test, np.mean(probs[name], 0).argmax(1), names)
            test[name].append({"f1": m["macro_f1"], "acc": m["accuracy"]})
    k = len(val["preset"]) // len(args.seeds)

    def seed_means(name, key):
        v = [r[key] for r in val[name]]
        return [float(np.mean(v[i * k:(i + 1) * k])) for i in range(len(args.seeds))]

    cfg = f["config"]  # every member of these runs trained with the same flags
    lines = [f"# v5's cRT variants on every member (fashion-small, {cfg['model']}, {cfg['epochs']} epochs, "
             f"batch {cfg['batch_size']})", "",
             "Command: `python bench/crt_check.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             f"Seeds {' '.join(map(str, args.seeds))}, {k} members each, median [min, max] over seeds. Validation:"
             " each member on its held-out third after its cRT and tau, averaged over the seed's members (the "
             "choice is made here). Test: the seed's member ensemble (each member's tau, then the mean).", "",
             "| cRT variant | val macro-F1 | val acc | test macro-F1 | test acc | val - preset, per seed |",
             "|---|---:|---:|---:|---:|---|"]
    base = seed_means("preset", "val_f1")
    for name in VARIANTS:
        f1, acc = seed_means(name, "val_f1"), seed_means(name, "val_acc")
        diff = " ".join(f"{a - b:+.3f}" for a, b in zip(f1, base))
        lines.append(f"| {name} | {spread(f1)} | {spread(acc)} | {spread([t['f1'] for t in test[name]])} | "
                     f"{spread([t['acc'] for t in test[name]])} | {diff} |")
    lines += ["", "Test macro-F1 per seed: " + "; ".join(
        f"{n} " + " ".join(f"{t['f1']:.4f}" for t in test[n]) for n in VARIANTS)]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

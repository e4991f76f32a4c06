"""A one-model preset's fixed decision tau, checked on the validation splits of the bench's seeds.

For each seed's run (bench/longtail.py's layout: RUNS/imagenet-sK/RECIPE), the shipped model's probabilities on
that run's own validation split (never its test split), then for every tau of the grid: the accuracy over the
seeds' validation images pooled, and the median over seeds of each split's macro-F1. The rule (written before
v6's re-check was computed): the highest median macro-F1 among the taus whose pooled accuracy is within
--acc-slack of the grid's best; ties go to the tau nearer -0.5 (the natural prior's Bayes rule under square-root
sampling), then to the more accurate.

    python bench/tau_check.py --runs RUNS --seeds 0 1 2 3 4 --recipe v6 --out bench/results/v6_tau_check.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch
from sklearn.metrics import f1_score

from common import REPO, layout, publish  # noqa: E402  (first: it puts the checkout on the import path)
from imgcls import checkpoint  # noqa: E402
from imgcls.data import load_dataset  # noqa: E402
from imgcls.decision import TAU_GRID, adjust  # noqa: E402
from imgcls.inference import predict_dataset  # noqa: E402
from imgcls.models import create_model  # noqa: E402


def validation_probs(rdir: str, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, validation positions, train class counts) of a fold folder's shipped model."""
    record = checkpoint.read(layout.fold_model(rdir))
    val = np.asarray(json.load(open(os.path.join(rdir, layout.SPLIT)))["folds"][0]["val"], dtype=np.int64)
    model = create_model(record.model_name, record.num_classes, pretrained=None)
    model.load_state_dict(record.model)
    pre = record.preprocessing
    probs = predict_dataset(model.eval(), images, val, img_size=pre.img_size, mean=pre.mean, std=pre.std,
                            device=torch.device("cpu"))
    return probs, val, np.asarray(record.train_class_counts)


def choose(table: dict, slack: float) -> float:
    """The rule: best median macro-F1 among the taus within `slack` of the best pooled accuracy."""
    best_acc = max(acc for acc, _ in table.values())
    allowed = [tau for tau, (acc, _) in table.items() if acc >= best_acc - slack - 1e-12]
    return max(allowed, key=lambda tau: (table[tau][1], -round(abs(tau + 0.5), 6), table[tau][0]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="bench/longtail.py's --runs folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--recipe", default="v6")
    p.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "fashion-small"))
    p.add_argument("--acc-slack", type=float, default=0.001)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    data = load_dataset(args.data, cache_dir="default", log=lambda *a: None)
    labels = data.labels.numpy()
    hits, f1s, sizes = {tau: 0 for tau in TAU_GRID}, {tau: [] for tau in TAU_GRID}, []
    for seed in args.seeds:
        rdir = str(layout.fold_dir(os.path.join(args.runs, f"imagenet-s{seed}", args.recipe), 0))
        probs, val, counts = validation_probs(rdir, data.images)
        sizes.append(len(val))
        for tau in TAU_GRID:
            pred = adjust(probs, counts, tau).argmax(1)
            hits[tau] += int((pred == labels[val]).sum())
            f1s[tau].append(f1_score(labels[val], pred, average="macro", zero_division=0))
    table = {tau: (hits[tau] / sum(sizes), statistics.median(f1s[tau])) for tau in TAU_GRID}
    chosen = choose(table, args.acc_slack)
    lines = [f"# {args.recipe}'s decision tau on the validation splits of seeds {' '.join(map(str, args.seeds))}",
             "", "    python bench/tau_check.py " + " ".join(argv if argv is not None else sys.argv[1:]), "",
             f"Validation images per seed: {', '.join(map(str, sizes))} (no test image is read).", "",
             "| tau | pooled accuracy | median macro-F1 | macro-F1 per seed |", "|---:|---:|---:|---|"]
    for tau in TAU_GRID:
        mark = " **(chosen)**" if tau == chosen else ""
        lines.append(f"| {tau:+.1f}{mark} | {table[tau][0]:.4f} | {table[tau][1]:.4f} | "
                     + ", ".join(f"{f:.3f}" for f in f1s[tau]) + " |")
    lines += ["", f"Rule: the best median macro-F1 among the taus within {args.acc_slack:g} of the best pooled "
              f"accuracy ({max(a for a, _ in table.values()):.4f}): tau {chosen:+.1f}."]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

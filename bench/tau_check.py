"""A one-model preset's fixed decision tau, checked on the validation splits of the bench's seeds.

For each seed's run (bench/longtail.py's layout: RUNS/imagenet-sK/RECIPE), the shipped model's probabilities on
that run's own validation split (never its test split), then for every tau of the grid: the accuracy over the
seeds' validation images pooled, and the median over seeds of each split's macro-F1. The rule (written before
v6's re-check was computed): the highest median macro-F1 among the taus whose pooled accuracy is within
--acc-slack of the grid's best; ties go to the tau nearer -0.5 (the natural prior's Bayes rule under square-root
sampling), then to the more accurate.

    python bench/tau_check.py --runs RUNS --seeds 0 1 2 3 4 --recipe v6 --out bench/results/v6_tau_check.md

--views with several candidates (each a comma-separated list of predict.py's --views) checks test-time
augmentation the same way: a table and a tau for each, then the views rule (written before v6's check was
computed): among the candidates whose median macro-F1 at their tau is at least the first candidate's (one
view, as shipped), the highest pooled accuracy; within 0.0005 of it, the one with fewer views (cheaper).

    python bench/tau_check.py --runs RUNS --recipe v6 --views identity identity,hflip \\
        identity,hflip,scale0.9,scale1.1 --out bench/results/v6_tta_check.md
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


def validation_probs(rdir: str, images, views=("identity",)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, validation positions, train class counts) of a fold folder's shipped model, averaged
    over the test-time views."""
    record = checkpoint.read(layout.fold_model(rdir))
    val = np.asarray(json.load(open(os.path.join(rdir, layout.SPLIT)))["folds"][0]["val"], dtype=np.int64)
    model = create_model(record.model_name, record.num_classes, pretrained=None)
    model.load_state_dict(record.model)
    pre = record.preprocessing
    probs = predict_dataset(model.eval(), images, val, img_size=pre.img_size, mean=pre.mean, std=pre.std,
                            device=torch.device("cpu"), views=views)
    return probs, val, np.asarray(record.train_class_counts)


def choose(table: dict, slack: float) -> float:
    """The rule: best median macro-F1 among the taus within `slack` of the best pooled accuracy."""
    best_acc = max(acc for acc, _ in table.values())
    allowed = [tau for tau, (acc, _) in table.items() if acc >= best_acc - slack - 1e-12]
    return max(allowed, key=lambda tau: (table[tau][1], -round(abs(tau + 0.5), 6), table[tau][0]))


def choose_views(tables: dict, slack: float = 0.0005) -> str:
    """The views rule: {views: (pooled accuracy, median macro-F1) at its tau}, the first being one view."""
    floor = next(iter(tables.values()))[1]
    allowed = {views: t for views, t in tables.items() if t[1] >= floor - 1e-12}
    best = max(acc for acc, _ in allowed.values())
    return min((views for views, (acc, _) in allowed.items() if acc >= best - slack - 1e-12),
               key=lambda views: len(views.split(",")))


def tau_table(args, data, views: tuple) -> tuple[list[str], float, tuple[float, float]]:
    """The tau grid on the seeds' validation splits under these views: (the table's lines, the chosen tau,
    (pooled accuracy, median macro-F1) there)."""
    labels = data.labels.numpy()
    hits, f1s, sizes = {tau: 0 for tau in TAU_GRID}, {tau: [] for tau in TAU_GRID}, []
    for seed in args.seeds:
        rdir = str(layout.fold_dir(os.path.join(args.runs, f"imagenet-s{seed}", args.recipe), 0))
        probs, val, counts = validation_probs(rdir, data.images, views)
        sizes.append(len(val))
        for tau in TAU_GRID:
            pred = adjust(probs, counts, tau).argmax(1)
            hits[tau] += int((pred == labels[val]).sum())
            f1s[tau].append(f1_score(labels[val], pred, average="macro", zero_division=0))
    table = {tau: (hits[tau] / sum(sizes), statistics.median(f1s[tau])) for tau in TAU_GRID}
    chosen = choose(table, args.acc_slack)
    lines = [(f"Views {', '.join(views)}. Validation images per seed: {', '.join(map(str, sizes))} (no test image "
              "is read)."), "", "| tau | pooled accuracy | median macro-F1 | macro-F1 per seed |", "|---:|---:|---:|---|"]
    for tau in TAU_GRID:
        mark = " **(chosen)**" if tau == chosen else ""
        lines.append(f"| {tau:+.1f}{mark} | {table[tau][0]:.4f} | {table[tau][1]:.4f} | "
                     + ", ".join(f"{f:.3f}" for f in f1s[tau]) + " |")
    lines += ["", (f"Rule: the best median macro-F1 among the taus within {args.acc_slack:g} of the best pooled "
                   f"accuracy ({max(a for a, _ in table.values()):.4f}): tau {chosen:+.1f}."), ""]
    return lines, chosen, table[chosen]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="bench/longtail.py's --runs folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--recipe", default="v6")
    p.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "fashion-small"))
    p.add_argument("--acc-slack", type=float, default=0.001)
    p.add_argument("--views", nargs="+", default=["identity"],
                   help="test-time views to check, each a comma-separated list; the first is the baseline")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    data = load_dataset(args.data, cache_dir="default", log=lambda *a: None)
    lines = [f"# {args.recipe}'s decision tau on the validation splits of seeds {' '.join(map(str, args.seeds))}",
             "", "    python bench/tau_check.py " + " ".join(argv if argv is not None else sys.argv[1:]), ""]
    chosen = {}
    for views in args.views:
        table, tau, scores = tau_table(args, data, tuple(views.split(",")))
        lines += table
        chosen[views] = (tau, scores)
    if len(args.views) > 1:
        winner = choose_views({views: scores for views, (_, scores) in chosen.items()})
        lines += ["| views | tau | pooled accuracy | median macro-F1 |", "|---|---:|---:|---:|"]
        lines += [f"| {views}{' **(chosen)**' if views == winner else ''} | {tau:+.1f} | {acc:.4f} | {f1:.4f} |"
                  for views, (tau, (acc, f1)) in chosen.items()]
        lines += ["", ("Rule: among the views whose median macro-F1 is at least the first's, the highest pooled "
                       f"accuracy; within 0.0005 of it, the fewest views: {winner}.")]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

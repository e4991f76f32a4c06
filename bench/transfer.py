"""Benchmark: fine-tuning from ImageNet weights vs training from random init, at the same budget.

For each recipe (a train.py preset) and each init (`--pretrained none` and `--pretrained default`), trains one
run through the project's own entry points (train.py, then predict.py on the run's held-out test split) with
the same model, input size, epochs, seed and data, and reports test accuracy, macro-F1, balanced accuracy,
training images/s (mean over epochs, from the run's summary.csv) and wall time. Prints a markdown table;
`--out FILE` also writes it, with the command line, to FILE.

    python bench/transfer.py                                   # Lite0, 80x60, 2 epochs, V1 and V3 recipes
    python bench/transfer.py --recipes v1 --epochs 1 --epoch-samples 4096 --data DIR

Without --data it uses ../shared/data/fashion-small (relative to the repository). Only the given flags differ
from the presets; `--epoch-samples` caps the images drawn per epoch (a subsampled budget, shown in the table).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from common import REPO, layout  # noqa: E402,F401  (first: it puts the checkout on the import path)
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")
INITS = {"scratch": "none", "imagenet": "default"}


def train_and_score(recipe: str, init: str, args) -> dict:
    """Train one run (fold 0) and predict its test split; returns the table row."""
    root = os.path.join(args.runs, f"{recipe}-{init}")
    train = [sys.executable, os.path.join(REPO, "train.py"), "--version", recipe, "--fold", "0",
             "--model", args.model, "--pretrained", INITS[init], "--img-size", args.img_size,
             "--epochs", str(args.epochs), "--seed", str(args.seed), "--data", args.data, "--out", root,
             "--workers", str(args.workers), "--device", "cpu", "--restart"]
    if args.epoch_samples:
        train += ["--epoch-samples", str(args.epoch_samples)]
    train += args.extra
    run = os.path.join(root, recipe)
    predict = [sys.executable, os.path.join(REPO, "predict.py"), "--run", run, "--fold", "0", "--device", "cpu",
               "--workers", str(args.workers)] + (["--tta"] if args.tta else [])
    t0 = time.perf_counter()
    for cmd in (train, predict):
        print("$ " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=None if args.verbose else subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(os.path.join(layout.fold_dir(run, 0), layout.SUMMARY)) as fh:
        img_s = statistics.mean(float(row["train_img_s"]) for row in csv.DictReader(fh))
    with open(os.path.join(layout.prediction_folder(run, "test", args.tta), layout.METRICS)) as fh:
        m = json.load(fh)
    return {"recipe": recipe, "init": init, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "balanced_accuracy": m["balanced_accuracy"], "train_img_s": img_s, "wall_s": wall}


def table(rows: list[dict]) -> str:
    lines = ["| recipe | init | test acc | macro-F1 | balanced acc | train img/s | wall (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['init']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
                     f"{r['balanced_accuracy']:.4f} | {r['train_img_s']:.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="data set (any train.py --data layout)")
    p.add_argument("--recipes", default="v1,v3", help="train.py presets, comma-separated (default v1,v3)")
    p.add_argument("--model", default="efficientnet_lite0", help="backbone for every run")
    p.add_argument("--img-size", default="80x60", help="HxW for every run (default 80x60, the storage size)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--epoch-samples", type=int, default=None, help="images drawn per epoch (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--tta", action="store_true", help="predict with test-time augmentation")
    p.add_argument("--runs", default=os.path.join(REPO, "runs-transfer"), help="folder for the runs")
    p.add_argument("--out", help="also write the table (with the command) to this markdown file")
    p.add_argument("--verbose", action="store_true", help="show the training logs")
    p.add_argument("extra", nargs="*", help="more train.py flags for every run (after --)")
    args = p.parse_args(argv)

    rows = []
    for recipe in args.recipes.split(","):
        for init in INITS:
            rows.append(train_and_score(recipe, init, args))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    budget = (f"{args.model}, {args.img_size}, {args.epochs} epoch(s)"
              + (f" of {args.epoch_samples} images" if args.epoch_samples else " over the whole train split")
              + f", seed {args.seed}, fold 0; test split of {args.data}" + (", TTA" if args.tta else ", no TTA"))
    text = f"Budget per run: {budget}.\n\n{table(rows)}"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(f"# Transfer: ImageNet weights vs random init\n\n```\npython {' '.join(sys.argv)}\n```\n\n"
                     f"{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

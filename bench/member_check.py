#!/usr/bin/env python3
"""A stage-1 change screened on one v5 member: does it train better than the preset? Validation first.

Trains v5's fold-0 member (`--fold 0` of the preset's 3 folds: two thirds of the images outside the test
split) with the preset plus the given train.py flags, and compares it with the same member as the preset
trains it, which bench/longtail.py already trained (RUNS/imagenet-s<seed>/kfold3/v5/fold0: same split, seed
and flags but the change). Scores: the member's own held-out third (after its cRT and tau, as train.py
reports it; this is what a change is chosen on) and the test split (the member alone with its tau, as
`predict.py --fold 0` uses it; reported, never chosen on).

    python bench/member_check.py --runs RUNS --seeds 0 1 --label lr-0.00052 -- --lr 5.2e-4
    python bench/member_check.py --runs RUNS --seeds 0 1 --label batch-32 -- --batch-size 32
    python bench/member_check.py --runs RUNS --seeds 0 1 --label batch-16 -- --batch-size 16

(The first is the lr finder's suggestion, 5.2e-4 against the preset's peak 1e-3: bench/results/lr_check.md;
the other two chose v5's batch size, each against the preset of its day: 64, then 32.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from common import REPO, layout, publish, spread  # noqa: E402,F401  (first: it puts the checkout on the import path)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import imgcls  # noqa: E402
from imgcls.metrics import classification_metrics  # noqa: E402
from imgcls.run import find_checkpoints, load_members, run_data  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")


def preset_run(args, seed: int) -> str:
    return os.path.join(args.runs, f"imagenet-s{seed}", "kfold3", "v5")


def candidate_run(args, seed: int) -> str:
    return os.path.join(args.runs, f"imagenet-s{seed}", args.label, "v5")


def train(args, seed: int) -> None:
    out = os.path.dirname(candidate_run(args, seed))
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--version", "v5", "--fold", "0", *args.flags,
           "--model", "efficientnet_lite0", "--pretrained", "default", "--img-size", "80x60", "--epochs", "2",
           "--seed", str(seed), "--data", args.data, "--out", out, "--device", "cpu", "--workers", "1"]
    os.makedirs(out, exist_ok=True)
    with open(out + ".log", "a") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        raise SystemExit(f"{args.label} seed {seed} failed (exit {done.returncode}); see {out}.log")


def scores(run: str) -> dict:
    """Fold 0's validation scores (its metrics.json) and its test scores alone, with the run's test split."""
    test_split = json.load(open(os.path.join(run, layout.SPLIT)))["test"]
    if test_split != json.load(open(os.path.join(layout.fold_dir(run, 0), layout.SPLIT)))["test"]:
        raise SystemExit(f"{run}: fold 0 was split differently from its run")
    val = json.load(open(os.path.join(layout.fold_dir(run, 0), layout.METRICS)))
    clf = imgcls.load(run, fold=0)
    dataset, test = run_data(load_members(find_checkpoints(run, fold=0)), "test", log=lambda *a, **k: None)
    probs = clf.probabilities(dataset.images[torch.as_tensor(test)])
    m = classification_metrics(dataset.labels.numpy()[test], probs.argmax(1), clf.classes)
    return {"val_f1": val["macro_f1"], "val_acc": val["accuracy"], "f1": m["macro_f1"], "acc": m["accuracy"],
            "test": test_split}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="bench/longtail.py's --runs (its v5 runs are the preset's members)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--label", required=True, help="the candidate's name: its run folder and table row")
    p.add_argument("--out", default=None, help="the report (default bench/results/member_check-LABEL.md)")
    p.add_argument("flags", nargs="+", help="the change: train.py flags after --, e.g. -- --batch-size 32")
    args = p.parse_args(argv)
    args.out = args.out or os.path.join(REPO, "bench", "results", f"member_check-{args.label}.md")
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda seed: train(args, seed), args.seeds))
    change = " ".join(args.flags)
    rows = {"v5 preset": [scores(preset_run(args, s)) for s in args.seeds],
            f"v5 {change}": [scores(candidate_run(args, s)) for s in args.seeds]}
    a, b = rows.values()
    if any(x["test"] != y["test"] for x, y in zip(a, b)):
        raise SystemExit("the preset's and the candidate's runs have different test splits")
    lines = [f"# v5's stage 1 with `{change}` against the preset (fashion-small, Lite0 80x60, 2 epochs)", "",
             "Command: `python bench/member_check.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             f"v5's fold-0 member (2/3 of the images outside the test split), seeds "
             f"{' '.join(map(str, args.seeds))}, median [min, max]; validation = its held-out third after cRT "
             "and tau; test = the member alone on the seed's test split.", "",
             "| member | val macro-F1 | val acc | test macro-F1 | test acc |", "|---|---:|---:|---:|---:|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(spread([v[k] for v in values]) for k in
                                                   ("val_f1", "val_acc", "f1", "acc")) + " |")
    lines += [f"seed {s}: candidate - preset: validation macro-F1 {y['val_f1'] - x['val_f1']:+.3f}, validation "
              f"accuracy {y['val_acc'] - x['val_acc']:+.3f}, test macro-F1 "
              f"{y['f1'] - x['f1']:+.3f}, test accuracy {y['acc'] - x['acc']:+.3f}"
              for s, x, y in zip(args.seeds, a, b)]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Does the lr finder's suggestion train better than the preset's lr? One v5 member, both ways.

`train.py --find-lr` on fashion-small (v5, Lite0, 80x60, fold 0 of v5's 3-fold split) suggests 5.2e-4; v5's
preset peak is 1e-3. This trains v5's fold-0 member (`--fold 0` of the preset's 3 folds: two thirds of the
images outside the test split) at the suggested peak lr and compares it with the same member at the preset's
lr, which bench/longtail.py already trained (RUNS/imagenet-s<seed>/kfold3/v5/fold0, same split, seed and
flags but --lr). Scores: the member's own held-out third (after its cRT and tau, as train.py reports it) and
the test split (the member alone, its tau, as `predict.py --fold 0` would use it).

    python bench/lr_check.py --runs /work/notes/lt8/runs --seeds 0 1 --lr 5.2e-4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import imgcls  # noqa: E402
from imgcls.metrics import classification_metrics  # noqa: E402
from imgcls.run import find_checkpoints, load_members, run_data  # noqa: E402
from tables import publish, spread  # noqa: E402  (bench/tables.py, beside this script)

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")


def preset_run(args, seed: int) -> str:
    return os.path.join(args.runs, f"imagenet-s{seed}", "kfold3", "v5")


def finder_run(args, seed: int) -> str:
    return os.path.join(args.runs, f"imagenet-s{seed}", f"lr-{args.lr:g}", "v5")


def train(args, seed: int) -> None:
    out = os.path.dirname(finder_run(args, seed))
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--version", "v5", "--fold", "0", "--lr", str(args.lr),
           "--model", "efficientnet_lite0", "--pretrained", "default", "--img-size", "80x60", "--epochs", "2",
           "--seed", str(seed), "--data", args.data, "--out", out, "--device", "cpu", "--workers", "1"]
    os.makedirs(out, exist_ok=True)
    with open(out + ".log", "a") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        raise SystemExit(f"lr {args.lr:g} seed {seed} failed (exit {done.returncode}); see {out}.log")


def scores(run: str) -> dict:
    """Fold 0's validation scores (its metrics.json) and its test scores alone, with the run's test split."""
    test_split = json.load(open(os.path.join(run, "split.json")))["test"]
    if test_split != json.load(open(os.path.join(run, "fold0", "split.json")))["test"]:
        raise SystemExit(f"{run}: fold 0 was split differently from its run")
    val = json.load(open(os.path.join(run, "fold0", "metrics.json")))
    clf = imgcls.load(run, fold=0)
    dataset, test = run_data(load_members(find_checkpoints(run, fold=0)), "test", log=lambda *a, **k: None)
    probs = clf.probabilities(dataset.images[torch.as_tensor(test)])
    m = classification_metrics(dataset.labels.numpy()[test], probs.argmax(1), clf.classes)
    return {"val_f1": val["macro_f1"], "val_acc": val["accuracy"], "f1": m["macro_f1"], "acc": m["accuracy"],
            "test": test_split}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="bench/longtail.py's --runs (its v5 runs are the preset's lr)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lr", type=float, default=5.2e-4, help="the finder's suggestion")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "lr_check.md"))
    args = p.parse_args(argv)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda seed: train(args, seed), args.seeds))
    rows = {"preset lr 1e-3": [scores(preset_run(args, s)) for s in args.seeds],
            f"finder's lr {args.lr:g}": [scores(finder_run(args, s)) for s in args.seeds]}
    a, b = rows.values()
    if any(x["test"] != y["test"] for x, y in zip(a, b)):
        raise SystemExit("the two lrs' runs have different test splits")
    lines = ["# The lr finder's suggestion against v5's preset lr (fashion-small, Lite0 80x60, 2 epochs)", "",
             "Command: `python bench/lr_check.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             f"v5's fold-0 member (2/3 of the images outside the test split), seeds "
             f"{' '.join(map(str, args.seeds))}, median [min, max]; validation = its held-out third after cRT "
             "and tau; test = the member alone on the seed's test split.", "",
             "| peak lr | val macro-F1 | val acc | test macro-F1 | test acc |", "|---|---:|---:|---:|---:|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(spread([v[k] for v in values]) for k in
                                                   ("val_f1", "val_acc", "f1", "acc")) + " |")
    lines += [f"seed {s}: finder - preset: validation macro-F1 {y['val_f1'] - x['val_f1']:+.3f}, test macro-F1 "
              f"{y['f1'] - x['f1']:+.3f}, test accuracy {y['acc'] - x['acc']:+.3f}"
              for s, x, y in zip(args.seeds, a, b)]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

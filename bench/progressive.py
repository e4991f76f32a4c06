#!/usr/bin/env python3
"""Progressive learning against fixed-size training at (about) equal wall-clock, on the held-out test split.

Both rows are `train.py --version v5 --folds 1 --fold 0` (one Lite0, 80% of the non-test images, candidate,
cRT head and tau chosen on the other 20%) at the storage size 80x60:
    fixed         --epochs E
    progressive   --epochs P --progressive STAGES (default: 3 epochs, the first half of the updates at half
                  the size (40x30) and half the augmentation strength, then 80x60 at full strength)
The two trainings of a seed run at the same time (1 thread each), so they share the machine's state; the
table gives each one's wall-clock from train.py's own `train_time_s` (training loops and cRT).

    python bench/progressive.py --runs /work/notes/lt8/runs --seeds 0 1
    python bench/progressive.py --runs RUNS --seeds 0 1 --progressive-flags "--epoch-samples 18052"

At batch 16 (v5's batch since the fourth session) a 40x30 update costs about 2/3 of an 80x60 one, not 1/4, so
3 progressive epochs would take an estimated 1.2-1.3x the fixed run's 2; --progressive-flags shortens them
(18052 draws = 0.8 of the 22,565 training images an epoch: 2.4 epochs' draws in all).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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


def out_dir(args, seed: int, name: str) -> str:
    return os.path.join(args.runs, f"imagenet-s{seed}", f"progressive-{name}")


def train(args, seed: int, name: str, flags: list[str]) -> None:
    out = out_dir(args, seed, name)
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--version", "v5", "--folds", "1", "--fold", "0",
           "--model", "efficientnet_lite0", "--pretrained", "default", "--img-size", "80x60", "--seed", str(seed),
           "--data", args.data, "--out", out, "--device", "cpu", "--workers", "1", *flags]
    os.makedirs(out, exist_ok=True)
    with open(out + ".log", "a") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}); see {out}.log")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--fixed-epochs", type=int, default=2)
    p.add_argument("--progressive-epochs", type=int, default=3)
    p.add_argument("--stages", default="0.5:0.5:0.5,1:1:1")
    p.add_argument("--progressive-flags", default="", metavar="FLAGS",
                   help="more train.py flags for the progressive run, to bring it to the fixed run's wall-clock, "
                        "e.g. \"--epoch-samples 18052\" (fewer draws per epoch)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "progressive.md"))
    args = p.parse_args(argv)
    recipes = {"fixed": ["--epochs", str(args.fixed_epochs)],
               "progressive": ["--epochs", str(args.progressive_epochs), "--progressive", args.stages,
                               *shlex.split(args.progressive_flags)]}
    jobs = [(seed, name) for seed in args.seeds for name in recipes]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda job: train(args, job[0], job[1], recipes[job[1]]), jobs))

    rows = {}
    for seed, name in jobs:
        run = os.path.join(out_dir(args, seed, name), "v5")
        clf = imgcls.load(run)
        dataset, test = run_data(load_members(find_checkpoints(run)), "test", log=lambda *a, **k: None)
        probs = clf.probabilities(dataset.images[torch.as_tensor(test)])
        m = classification_metrics(dataset.labels.numpy()[test], probs.argmax(1), clf.classes)
        seconds = json.loads(open(os.path.join(layout.fold_dir(run, 0), layout.METRICS)).read())["train_time_s"]
        rows.setdefault(name, []).append((m["accuracy"], m["macro_f1"], seconds))

    lines = ["# Progressive learning against fixed size (fashion-small, Lite0, v5 --folds 1)", "",
             "Command: `" + shlex.join(["python", "bench/progressive.py",
                                        *(argv if argv is not None else sys.argv[1:])]) + "`", "",
             f"Seeds {' '.join(map(str, args.seeds))}; held-out test split; median [min, max]. fixed: "
             f"{args.fixed_epochs} epochs at 80x60; progressive: {args.progressive_epochs} epochs, stages "
             f"`{args.stages}` (END:SIZE:STRENGTH)" + (f", {args.progressive_flags}" if args.progressive_flags else "")
             + ".", "",
             "| recipe | acc | macro-F1 | train s |", "|---|---:|---:|---:|"]
    for name, values in rows.items():
        lines.append(f"| {name} | {spread([v[0] for v in values])} | {spread([v[1] for v in values])} "
                     f"| {spread([v[2] for v in values], '{:.0f}')} |")
    for i, seed in enumerate(args.seeds):
        f, g = rows["fixed"][i], rows["progressive"][i]
        lines.append(f"seed {seed}: progressive - fixed: macro-F1 {g[1] - f[1]:+.3f}, accuracy {g[0] - f[0]:+.3f}, "
                     f"time x{g[2] / f[2]:.2f}")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

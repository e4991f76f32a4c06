"""Benchmark: OpenMP's wait policy for train.py and predict.py, alone and beside one busy process.

PyTorch's CPU kernels run on OpenMP threads; between parallel regions the idle threads spin (libgomp's
default) or sleep (OMP_WAIT_POLICY=PASSIVE). Spinning saves microseconds on an idle machine; on a machine
where another process holds a core, a spinning thread waits for a peer that is not scheduled, and small
operations become many times slower. This measures the user's commands both ways:

    train    train.py --version v4 on a 3,000-image subset, 60 steps of 64 images: the epoch's img/s
    predict  imgcls.load(run).probabilities on 1,000 images: img/s

each alone and beside a busy neighbour (a second PyTorch process doing matrix products on 2 threads, like
another training job), `--repeats` times, in fresh processes; median [min, max]. "libgomp default" is
OMP_WAIT_POLICY set to the empty string, which the CLI leaves alone (a user's own setting always wins).

    python bench/threads.py --data ../shared/data/fashion-small
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPO  # noqa: E402,F401  (first: it puts the checkout on the import path)
POLICIES = {"libgomp default (spin)": "", "PASSIVE": "PASSIVE"}
BUSY = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\n"
        "while True:\n    a = torch.tanh(a @ a)\n")
PREDICT = ("import sys, time, torch, imgcls\nclf = imgcls.load(sys.argv[1], device='cpu')\n"
           "x = torch.randint(0, 256, (1000, 3, *clf.storage_size), dtype=torch.uint8, "
           "generator=torch.Generator().manual_seed(0))\nclf.probabilities(x[:64])\n"
           "t = time.perf_counter(); clf.probabilities(x); print(1000 / (time.perf_counter() - t))\n")


def subset(data: str, folder: str, n: int = 3000) -> str:
    """A path,label manifest of the first n images (by file name order) of a Kaggle-layout data set."""
    sys.path.insert(0, REPO)
    from imgcls.data import load_index
    index = load_index(data, log=lambda *a: None)
    path = os.path.join(folder, "subset.csv")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows((p, index.class_names[y]) for p, y in list(zip(index.paths, index.labels))[:n])
    return path


def run_env(policy: str) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY=policy, PYTHONPATH=REPO)
    env.pop("OMP_NUM_THREADS", None)  # the machine's default: every core, as a user gets it
    return env


def train_img_s(manifest: str, out: str, policy: str) -> float:
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--version", "v4", "--data", manifest, "--epochs", "1",
           "--epoch-samples", "3840", "--batch-size", "64", "--out", out, "--device", "cpu", "--restart",
           "--cache-dir", os.path.join(out, "cache"), "--crt-steps", "10"]
    done = subprocess.run(cmd, env=run_env(policy), capture_output=True, text=True, check=True)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("epoch 1/1"))
    return float(re.search(r"(\d+) img/s", line).group(1))


def predict_img_s(run: str, policy: str) -> float:
    done = subprocess.run([sys.executable, "-c", PREDICT, run], env=run_env(policy), capture_output=True,
                          text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="imgcls-threads-")
    manifest = subset(args.data, folder)
    results = {}
    for neighbour in ("alone", "beside a busy process"):
        for name, policy in POLICIES.items():
            for repeat in range(args.repeats):
                busy = subprocess.Popen([sys.executable, "-c", BUSY]) if neighbour != "alone" else None
                try:
                    time.sleep(1.0 if busy else 0.0)
                    out = os.path.join(folder, "runs")
                    results.setdefault((neighbour, name, "train"), []).append(train_img_s(manifest, out, policy))
                    results.setdefault((neighbour, name, "predict"), []).append(
                        predict_img_s(os.path.join(out, "v4"), policy))
                finally:
                    if busy:
                        busy.kill()
                        busy.wait()
                print(neighbour, name, {k[2]: v[-1] for k, v in results.items() if k[:2] == (neighbour, name)},
                      flush=True)
    lines = ["| neighbour | OMP_WAIT_POLICY | train img/s | predict img/s |", "|---|---|---:|---:|"]
    for neighbour in ("alone", "beside a busy process"):
        for name in POLICIES:
            cells = []
            for what in ("train", "predict"):
                v = results[(neighbour, name, what)]
                cells.append(f"{statistics.median(v):.0f} [{min(v):.0f}, {max(v):.0f}]")
            lines.append(f"| {neighbour} | {name} | " + " | ".join(cells) + " |")
    for neighbour in ("alone", "beside a busy process"):
        for what in ("train", "predict"):
            ratio = statistics.median(results[(neighbour, "PASSIVE", what)]) / statistics.median(
                results[(neighbour, "libgomp default (spin)", what)])
            lines.append(f"\n{what}, {neighbour}: PASSIVE / default = x{ratio:.2f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""One fast model distilled from v5's fold ensemble: quality on the held-out test split and predict
throughput, student against its teacher, same run.

For each seed the teacher is bench/longtail.py's v5 run (RUNS/imagenet-sS/kfold3/v5: three Lite0 members).
The student is one Lite0 trained with `train.py --version v5 --folds 1 --teacher TEACHER` (the teacher's test
split; 80% of the rest trained on, 20% to choose the candidate, cRT head and tau), one per --variants entry
(kd, bkd) and --epochs budget. Scored on the test split: the teacher as shipped (no TTA in v5's preset), the
teacher with TTA (identity, hflip, scale 0.9, 1.1: 12 forward passes an image) and each student. Throughput: images/s of
`Classifier.probabilities` at batch 64 on --threads threads, teacher and student timed in turn, median of
--repeats; the ratio is the median of the per-repeat ratios.

    python bench/distill.py --runs /work/notes/lt8/runs --seeds 0 1 --jobs 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import imgcls  # noqa: E402
from imgcls.metrics import classification_metrics  # noqa: E402
from imgcls.run import load_members, find_checkpoints, run_data  # noqa: E402
from tables import publish, spread  # noqa: E402  (bench/tables.py, beside this script)

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")


def teacher_dir(args, seed: int) -> str:
    return os.path.join(args.runs, f"imagenet-s{seed}", "kfold3", "v5")


def student_out(args, seed: int, variant: str, epochs: int) -> str:
    # 2 epochs (v5's budget) keeps the folder name of the first measurements, so their students are skipped
    suffix = "" if epochs == 2 else f"-e{epochs}"
    return os.path.join(args.runs, f"imagenet-s{seed}", f"student-{variant.replace(':', '-T')}{suffix}")


def distill_flags(variant: str) -> list[str]:
    """'kd' or 'bkd', optionally ':T' for the temperature (e.g. kd:4); without it train.py's default T."""
    loss, _, temperature = variant.partition(":")
    return ["--distill", loss] + (["--kd-temperature", temperature] if temperature else [])


def label(variant: str, epochs: int) -> str:
    return f"student: one Lite0, {epochs} epochs, " + " ".join(distill_flags(variant))


def train_student(args, seed: int, variant: str, epochs: int) -> float:
    """Train (or skip: train.py skips a finished run) one student; returns its training time as train.py
    records it (training loops + cRT; the teacher's probabilities are computed before and not counted), so a
    skipped student reports the time it took when it trained."""
    out = student_out(args, seed, variant, epochs)
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--version", "v5", "--folds", "1", "--fold", "0",
           "--teacher", teacher_dir(args, seed), *distill_flags(variant), "--model", "efficientnet_lite0",
           "--pretrained", "default", "--img-size", "80x60", "--epochs", str(epochs), "--seed", str(seed),
           "--data", args.data, "--out", out, "--device", "cpu", "--workers", "1", *args.extra]
    os.makedirs(out, exist_ok=True)
    with open(out + ".log", "a") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if done.returncode != 0:
        raise SystemExit(f"student failed (exit {done.returncode}); see {out}.log")
    metrics = json.load(open(os.path.join(out, "v5", "fold0", "metrics.json")))
    return metrics["train_time_s"] + metrics.get("crt_seconds", 0.0)


def score(clf, pixels, labels) -> dict:
    probs = clf.probabilities(pixels)
    m = classification_metrics(labels, probs.argmax(1), clf.classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def throughput(clfs: dict, pixels: torch.Tensor, repeats: int) -> dict:
    """name -> list of images/s per repeat (each repeat times every classifier in turn)."""
    times = {name: [] for name in clfs}
    for name, clf in clfs.items():  # warm-up: builds the models, first-call allocations
        clf.probabilities(pixels[:64])
    for _ in range(repeats):
        for name, clf in clfs.items():
            t0 = time.perf_counter()
            clf.probabilities(pixels)
            times[name].append(len(pixels) / (time.perf_counter() - t0))
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="bench/longtail.py's --runs (the teachers are its v5 runs)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", default="kd", help="kd, bkd, each optionally :T for the temperature (kd:4); "
                                                    "comma-separated")
    p.add_argument("--epochs", type=int, nargs="+", default=[2], help="the students' epochs, one student each")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per training")
    p.add_argument("--bench-threads", type=int, default=2, help="threads for the throughput timing")
    p.add_argument("--throughput-images", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "distill.md"))
    p.add_argument("extra", nargs="*", help="more train.py flags for the students, after --")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    jobs = [(seed, v, e) for seed in args.seeds for v in variants for e in args.epochs]
    jobs.sort(key=lambda job: -job[2])  # longest first: the pool's jobs finish closer together
    with ThreadPoolExecutor(args.jobs) as pool:
        walls = dict(zip(jobs, pool.map(lambda job: train_student(args, *job), jobs)))

    torch.set_num_threads(args.bench_threads)
    rows, speed, val = {}, {}, {}
    for seed in args.seeds:
        teacher = teacher_dir(args, seed)
        members = load_members(find_checkpoints(teacher))
        dataset, test = run_data(members, "test", log=lambda *a, **k: None)
        pixels, labels = dataset.images[torch.as_tensor(test)], dataset.labels.numpy()[test]
        clfs = {"teacher: v5 3-fold ensemble (as shipped, no TTA)": imgcls.load(teacher, batch_size=64),
                "teacher: v5 3-fold ensemble + TTA (4 views)": imgcls.load(teacher, tta=True, batch_size=64)}
        for v, e in [(v, e) for v in variants for e in args.epochs]:
            out = student_out(args, seed, v, e)
            clfs[label(v, e)] = imgcls.load(os.path.join(out, "v5"), batch_size=64)
            # the student's own validation (its 20%, after cRT and tau): where a student variant is chosen
            val.setdefault(label(v, e), []).append(json.load(open(os.path.join(out, "v5", "fold0", "metrics.json"))))
        for name, clf in clfs.items():
            rows.setdefault(name, []).append(score(clf, pixels, labels))
        timed = throughput(clfs, pixels[:args.throughput_images], args.repeats)
        for name, values in timed.items():
            speed.setdefault(name, []).append(statistics.median(values))
        for name in clfs:
            speed.setdefault(("ratio", name), []).extend(
                [s / t for s, t in zip(timed[name], timed["teacher: v5 3-fold ensemble + TTA (4 views)"])])

    lines = ["# Distillation: one Lite0 from v5's 3-fold ensemble (fashion-small, 80x60)", "",
             "Command: `python bench/distill.py " + " ".join(sys.argv[1:]) + "`", "",
             f"Seeds {' '.join(map(str, args.seeds))}; test split of each seed's v5 run (never trained or tuned on); "
             f"median [min, max] over seeds. img/s: `Classifier.probabilities` at batch 64, "
             f"{args.bench_threads} threads, {args.throughput_images} test images, median of {args.repeats} "
             f"repeats; x TTA teacher = median of per-repeat ratios to the teacher with TTA. Student val: its own "
             f"validation images (20% of the non-test images, after cRT and tau), where a student variant is "
             f"chosen; the teacher has no such column (each member validated on a different third).", "",
             "| model | student val macro-F1 | test acc | test macro-F1 | img/s | x TTA teacher |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, scores in rows.items():
        v = spread([m["macro_f1"] for m in val[name]]) if name in val else "-"
        lines.append(f"| {name} | {v} | {spread([s['accuracy'] for s in scores])} | "
                     f"{spread([s['macro_f1'] for s in scores])} "
                     f"| {statistics.median(speed[name]):.0f} | {statistics.median(speed[('ratio', name)]):.2f} |")
    lines += ["", "Student training time (s, train.py's training loops + cRT, 2 at a time, 1 thread each; the teacher's "
              "probabilities, computed once before, not counted): "
              + ", ".join(f"seed {s} {v} {e} epochs {walls[(s, v, e)]:.0f}" for s, v, e in jobs)]
    for seed_i, seed in enumerate(args.seeds):
        t = rows["teacher: v5 3-fold ensemble + TTA (4 views)"][seed_i]["macro_f1"]
        for v, e in [(v, e) for v in variants for e in args.epochs]:
            s = rows[label(v, e)][seed_i]["macro_f1"]
            lines.append(f"seed {seed}: student {v}, {e} epochs - teacher with TTA: macro-F1 {s - t:+.3f}")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

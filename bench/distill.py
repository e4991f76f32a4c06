#!/usr/bin/env python3
"""One fast model distilled from v5's fold ensemble: quality on the held-out test split and predict
throughput, student against its teacher, same run.

For each seed the teacher is bench/longtail.py's v5 run (RUNS/imagenet-sS/kfold3/v5: three Lite0 members).
The student is one Lite0 trained with `train.py --version v5 --folds 1 --teacher TEACHER` (the teacher's test
split; 80% of the rest trained on, 20% to choose the candidate, cRT head and tau), one per --variants entry
(kd, bkd; `+refit` adds `--refit true`: the 80/20 student becomes the selection stage and the shipped
student is trained again on every non-test image, as the teacher's members together were) and --epochs
budget. Scored on the test split: the teacher as shipped (no TTA in v5's preset), the
teacher with TTA (identity, hflip, scale 0.9, 1.1: 12 forward passes an image) and each student. Throughput: images/s of
`Classifier.probabilities` at batch 64 on --threads threads, teacher and student timed in turn, median of
--repeats; the ratio is the median of the per-repeat ratios.

    python bench/distill.py --runs /work/notes/lt8/runs --seeds 0 1 --jobs 2 --threads 1
    python bench/distill.py --runs RUNS --seeds 0 1 2 3 4 --variants kd,kd+refit --seeds-for kd+refit:0,1
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

from common import REPO, layout, publish, spread  # noqa: E402,F401  (first: it puts the checkout on the import path)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import imgcls  # noqa: E402
from imgcls import checkpoint  # noqa: E402
from imgcls.metrics import classification_metrics  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402
from imgcls.run import load_members, find_checkpoints, run_data  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")


def teacher_dir(args, seed: int) -> str:
    return os.path.join(args.runs, f"imagenet-s{seed}", "kfold3", "v5")


def student_out(args, seed: int, variant: str, epochs: int) -> str:
    # 2 epochs (v5's budget) keeps the folder name of the first measurements, so their students are skipped
    loss, refit = variant.split("+refit")[0], variant.endswith("+refit")
    suffix = ("" if epochs == 2 else f"-e{epochs}") + ("-refit" if refit else "")
    return os.path.join(args.runs, f"imagenet-s{seed}", f"student-{loss.replace(':', '-T')}{suffix}")


def distill_flags(variant: str) -> list[str]:
    """'kd' or 'bkd', optionally ':T' for the temperature (e.g. kd:4) and '+refit' for a student trained
    again on every non-test image; without ':T' train.py's default T."""
    variant, refit = variant.split("+refit")[0], variant.endswith("+refit")
    loss, _, temperature = variant.partition(":")
    return (["--distill", loss] + (["--kd-temperature", temperature] if temperature else [])
            + (["--refit", "true"] if refit else []))


def label(variant: str, epochs: int) -> str:
    return f"student: one Lite0, {epochs} epochs, " + " ".join(distill_flags(variant))


def student_fold(args, seed: int, variant: str, epochs: int, refits: bool) -> str:
    """The fold folder to score. When the seed also has the variant's refit (`refits`), the 80/20 student is
    that refit's selection stage (select/): the same train.py command without --refit, so the same model on
    the CPU (checked bit for bit on two seeds), not trained a second time."""
    if refits and not variant.endswith("+refit"):
        run = os.path.join(student_out(args, seed, variant + "+refit", epochs), "v5")
        return os.path.join(layout.fold_dir(run, 0), layout.SELECT)
    return str(layout.fold_dir(os.path.join(student_out(args, seed, variant, epochs), "v5"), 0))


def same_student(a: str, b: str) -> bool:
    """Whether two fold folders ship the same weights, tensor for tensor (and the same tau)."""
    x, y = (checkpoint.read(layout.fold_model(fold)) for fold in (a, b))
    return (x.model.keys() == y.model.keys() and all(torch.equal(x.model[k], y.model[k]) for k in x.model)
            and x.decision_tau == y.decision_tau)


def train_time(fold: str) -> float:
    """Training time as train.py records it (training loops + cRT; a refit's counts both stages)."""
    metrics = json.load(open(os.path.join(fold, layout.METRICS)))
    return metrics["train_time_s"] + metrics.get("crt_seconds", 0.0)


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
    return train_time(str(layout.fold_dir(os.path.join(out, "v5"), 0)))


def score(clf, pixels, labels) -> dict:
    pred = clf.probabilities(pixels).argmax(1)
    m = classification_metrics(labels, pred, clf.classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "pred": pred}


def f1_shares(y: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    """Each class's share of macro-F1: its F1 over the number of classes averaged (scikit-learn's macro F1
    averages over the classes in y or in the predictions), so the shares sum to the macro-F1."""
    classes = np.union1d(y, pred)
    f1 = f1_score(y, pred, labels=classes, average=None, zero_division=0)
    return {int(c): float(v) / len(classes) for c, v in zip(classes, f1)}


def gap_by_support(y: np.ndarray, pred: np.ndarray, reference: np.ndarray, small: int = 5) -> tuple[float, float]:
    """macro-F1(pred) - macro-F1(reference), split into the classes with at most `small` test images and the
    rest: in a class with one test image that one image moves macro-F1 by a whole class's share."""
    a, b, support = f1_shares(y, pred), f1_shares(y, reference), np.bincount(y)
    gap = {c: a.get(c, 0.0) - b.get(c, 0.0) for c in set(a) | set(b)}
    few = sum(d for c, d in gap.items() if (support[c] if c < len(support) else 0) <= small)
    return few, sum(gap.values()) - few


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
    p.add_argument("--seeds-for", nargs="+", default=[], metavar="VARIANT:SEEDS",
                   help="train and score VARIANT on these seeds only (e.g. kd+refit:0,1); others on --seeds")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per training")
    p.add_argument("--bench-threads", type=int, default=2, help="threads for the throughput timing")
    p.add_argument("--throughput-images", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "distill.md"))
    p.add_argument("extra", nargs="*", help="more train.py flags for the students, after --")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    try:  # rpartition: a variant may hold a ':' of its own (kd:4)
        seeds_for = {v: [int(s) for s in seeds.split(",")] for v, _, seeds in
                     (entry.rpartition(":") for entry in args.seeds_for)}
    except ValueError:
        p.error(f"--seeds-for {' '.join(args.seeds_for)}: expected VARIANT:SEED,SEED,... entries, e.g. kd+refit:0,1")
    if set(seeds_for) - set(variants):
        p.error(f"--seeds-for names {sorted(set(seeds_for) - set(variants))}, not in --variants {args.variants}")
    students = {seed: [(v, e) for v in variants for e in args.epochs if seed in seeds_for.get(v, args.seeds)]
                for seed in args.seeds}
    refits = {(seed, v, e): (v + "+refit", e) in students[seed] for seed in args.seeds for v, e in students[seed]}
    jobs = [job for job, refit in refits.items() if not refit]  # a refit's selection stage is the 80/20 student
    jobs.sort(key=lambda job: -job[2])  # longest first: the pool's jobs finish closer together
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: train_student(args, *job), jobs))
    walls = {job: train_time(student_fold(args, *job, refit)) for job, refit in refits.items()}
    # where the 80/20 student was also trained on its own (an earlier run of this script), it must be the refit's
    # selection stage, or reading one for the other is wrong
    checked = []
    for (seed, v, e), refit in refits.items():
        alone = str(layout.fold_dir(os.path.join(student_out(args, seed, v, e), "v5"), 0))
        if refit and layout.fold_model(alone) is not None:
            if not same_student(alone, student_fold(args, seed, v, e, True)):
                raise SystemExit(f"{alone} differs from its refit's selection stage; score them apart")
            checked.append(f"seed {seed} {v} {e} epochs")

    torch.set_num_threads(args.bench_threads)
    rows, speed, val, truth = {}, {}, {}, {}
    for seed in args.seeds:
        teacher = teacher_dir(args, seed)
        members = load_members(find_checkpoints(teacher))
        dataset, test = run_data(members, "test", log=lambda *a, **k: None)
        pixels, labels = dataset.images[torch.as_tensor(test)], dataset.labels.numpy()[test]
        truth[seed] = labels
        clfs = {"teacher: v5 3-fold ensemble (as shipped, no TTA)": imgcls.load(teacher, batch_size=64),
                "teacher: v5 3-fold ensemble + TTA (4 views)": imgcls.load(teacher, tta=True, batch_size=64)}
        for v, e in students[seed]:
            fold = student_fold(args, seed, v, e, refits[(seed, v, e)])
            clfs[label(v, e)] = imgcls.load(fold, batch_size=64)
            # the student's own validation (its 20%, after cRT and tau): where a student variant is chosen. A
            # refit has none of its own (its metrics.json repeats its selection stage's, the 80/20 student's)
            if not v.endswith("+refit"):
                val.setdefault(label(v, e), []).append(json.load(open(os.path.join(fold, layout.METRICS))))
        for name, clf in clfs.items():
            rows.setdefault(name, {})[seed] = score(clf, pixels, labels)
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
             f"chosen; the teacher has no such column (each member validated on a different third), nor has a "
             f"refit student (its selection stage is the 80/20 student; its training time counts both stages).", "",
             "| model | student val macro-F1 | test acc | test macro-F1 | img/s | x TTA teacher |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, by_seed in rows.items():
        v = spread([m["macro_f1"] for m in val[name]]) if name in val else "-"
        scores = list(by_seed.values())
        on = "" if len(by_seed) == len(args.seeds) else f" (seeds {' '.join(map(str, by_seed))})"
        lines.append(f"| {name}{on} | {v} | {spread([s['accuracy'] for s in scores])} | "
                     f"{spread([s['macro_f1'] for s in scores])} "
                     f"| {statistics.median(speed[name]):.0f} | {statistics.median(speed[('ratio', name)]):.2f} |")
    if checked:
        lines += ["", "80/20 students read from their refit's select/ and also trained alone, same weights tensor for "
                  "tensor and same tau: " + ", ".join(checked)]
    lines += ["", "Student training time (s, train.py's training loops + cRT, 2 at a time, 1 thread each; the teacher's "
              "probabilities, computed once before, not counted): "
              + ", ".join(f"seed {s} {v} {e} epochs {wall:.0f}" for (s, v, e), wall in walls.items())]
    teacher = rows["teacher: v5 3-fold ensemble + TTA (4 views)"]
    diffs = {}
    for seed in args.seeds:
        for v, e in students[seed]:
            student = rows[label(v, e)][seed]
            diffs.setdefault((v, e), []).append(student["macro_f1"] - teacher[seed]["macro_f1"])
            few, rest = gap_by_support(truth[seed], student["pred"], teacher[seed]["pred"])
            lines.append(f"seed {seed}: student {v}, {e} epochs - teacher with TTA: macro-F1 {diffs[(v, e)][-1]:+.3f} "
                         f"({few:+.3f} in the classes with <= 5 test images, {rest:+.3f} in the others)")
    lines += [f"student {v}, {e} epochs - teacher with TTA, per seed: median {statistics.median(d):+.3f} "
              f"[{min(d):+.3f}, {max(d):+.3f}] over {len(d)} seeds" for (v, e), d in diffs.items()]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

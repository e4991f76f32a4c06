"""Benchmark: long-tail recipes at one budget, scored on a held-out test split, with seeds and spread, against
an independent plain baseline.

Every recipe trains the same backbone (EfficientNet-Lite0, ImageNet weights) at the same input size, epochs,
test split and seed:

    plain      bench/plain.py, a separate short training loop like a user's own script (CE, natural sampling,
               flip, AdamW + OneCycle, last epoch, batch 64), trained on every image outside the test split:
               the images v5 may use. None of imgcls's training code runs in it.
    plain-b32  the same script at batch 32 (twice the updates; v5's batch size in the fourth session), and
    plain-b16  at batch 16 (v5's): separate the batch size from the rest of v5's recipe
    plain-e1, plain-lite1-e1, plain-lite2-e1
               the plain script for 1 epoch, with Lite0, Lite1 and Lite2 (other budgets for the figure)
    plain-e2.2 Lite0 for 2.2 epochs: Lite1's 1.7 epochs' minutes
    plain-e1.75
               Lite0 for 1.75 epochs: v6's measured minutes (three frozen blocks, 2 epochs) at --epochs 1
    plain-lite1-e1.3, plain-lite1-e1.7, plain-lite2-e1.2, plain-lite2-e1.45
               Lite1 and Lite2 for fractions of an epoch more, up to Lite0's 2-epoch minutes (the larger
               backbones at equal wall-clock)
    v4         train.py --version v4: CE on 80% of the rest (20% validation), the best epoch by validation
               macro-F1, cRT, the validation-chosen decision tau
    v5         train.py --version v5 --fold all: flip only, the annealed (last or EMA) weights, cRT with
               square-root sampling, tau, as a 3-fold cross-fitted ensemble: each member trains on 2/3 of the
               images outside the test split and chooses its candidate and tau on the third it did not see;
               the three predict together (imgcls.load, as predict.py)
    v5-refit   the other way to use every image: v5's recipe as one model (`--refit true --folds 1`): choose
               on a 20% validation split, then train again on train + validation with the chosen settings
    v6         train.py --version v6: one model for twice the bench's epochs (BUDGET), compared with what a user
               would do with the same minutes: plain-2x (the plain script for 2x the epochs, its OneCycle over
               the longer run) and plain-ens2 (two plain models, probabilities averaged)
    v1..v3     the write-up's recipes on the budget's backbone (optional)
    student-kd, student-kd-e4
               the distilled students bench/distill.py trains from each seed's v5 (2 and 4 epochs; scored
               here, not trained; their time includes the teacher's training and its pass over their images)
and, from the same runs (no extra training; cRT and tau recomputed here with the project's functions),
what each of v5's changes contributed:
    v4 stage 1          v4's model before cRT and tau (the best epoch, 80% of the data)
    v5 select: ...      v5-refit's selection stage (80% of the data) with each candidate + cRT + tau: the best
                        epoch by validation macro-F1 (today's rule), the last epoch, the EMA, and the one it chose
    v5 refit, stage 1   the refit's model before cRT and tau

Columns: test accuracy, macro-F1, balanced accuracy, F1 of head (>= 500 training images), medium (50-499)
and tail (< 50) classes, worst-class F1 and training time (the training loops and cRT, both stages for v5);
median over seeds with [min, max]. v4's and v5's rows are checked against predict.py's own metrics.

    python bench/longtail.py                                  # fashion-small, Lite0 80x60, 2 epochs, seeds 0 1
    python bench/longtail.py --seeds 0 1 2 --seeds-for v5-refit:0,1  # v5-refit (and its contributions) on two seeds
    python bench/longtail.py --recipes v5,plain --seeds 0 --epochs 1
"""
from __future__ import annotations

import argparse
import collections
import csv
import functools
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from common import REPO, layout, run_logged  # noqa: E402,F401  (first: it puts the checkout on the import path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import imgcls  # noqa: E402
from imgcls import checkpoint  # noqa: E402
from imgcls.data import load_dataset  # noqa: E402
from imgcls.data.splits import make_split  # noqa: E402
from imgcls.decision import adjust, choose_tau  # noqa: E402
from imgcls.decoupling import crt  # noqa: E402
from imgcls.inference import predict_dataset  # noqa: E402
from imgcls.metrics import classification_metrics, group_f1  # noqa: E402
from imgcls.models import create_model  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")
INITS = {"imagenet": "default", "scratch": "none"}
COLUMNS = [("accuracy", "acc"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "bal acc"), ("head_f1", "head F1"),
           ("medium_f1", "medium F1"), ("tail_f1", "tail F1"), ("worst_class_f1", "worst F1"),
           ("train_s", "train s")]
class Plain(NamedTuple):
    """One of the plain baseline's recipes: bench/plain.py at this batch size (and model / epochs, when not
    the bench's --model / --epochs)."""
    batch: int
    name: str
    model: str | None = None
    epochs: float | None = None
    line: str | None = None  # the figure's line that joins this budget with the recipe's others
    members: int = 1  # an ensemble: this many plain models (seeds seed, seed + 1000, ...), probabilities averaged
    v5_minutes: bool = False  # trained for --v5-factor x --epochs epochs: the plain script given v5's minutes
    factor: float | None = None  # trained for factor x --epochs epochs (v6's budget: BUDGET)


def plain_epochs(args, plain: Plain) -> float:
    """The epochs a plain recipe trains: its own budget, v5's minutes (--v5-factor x --epochs), or the bench's."""
    if plain.v5_minutes:
        return round(args.v5_factor * args.epochs, 2)
    if plain.factor:
        return round(plain.factor * args.epochs, 2)
    return plain.epochs or args.epochs


def plain_members(args, init: str, seed: int, recipe: str) -> list[tuple[str, str, int]]:
    """(probabilities file, log, training seed) of each model of a plain recipe. An ensemble's first model is
    the plain recipe's own run (same command, same seed: the same weights), trained once for both."""
    plain, out = PLAIN[recipe], []
    for m in range(plain.members):
        folder = f"{recipe}-m{m}" if m else ("plain" if plain.members > 1 else recipe)
        out.append((plain_probs_path(args, init, seed, folder), os.path.join(args.runs, f"{init}-s{seed}-{folder}.log"),
                    seed + 1000 * m))
    return out


LITE0 = "plain (independent, all images)"  # the default plain recipe's name, and its budgets' line
LITE1, LITE2 = "plain, Lite1 (1-1.7 epochs)", "plain, Lite2 (1-1.45 epochs)"
PLAIN = {"plain": Plain(64, LITE0),
         "plain-b32": Plain(32, "plain, batch 32 (independent, all images)"),
         "plain-b16": Plain(16, "plain, batch 16 (independent, all images)"),
         # other budgets and backbones for the time-to-quality figure: 1 epoch of Lite0, Lite1 and Lite2 (the
         # larger backbones cost more an epoch, so they are compared with Lite0 by minutes, not epochs)
         "plain-e1": Plain(64, "plain, 1 epoch", epochs=1, line=LITE0),
         "plain-e2.2": Plain(64, "plain, 2.2 epochs", epochs=2.2, line=LITE0),  # Lite1's 1.7 epochs' minutes
         "plain-lite1-e1": Plain(64, "plain, Lite1, 1 epoch", "efficientnet_lite1", 1, LITE1),
         "plain-lite2-e1": Plain(64, "plain, Lite2, 1 epoch", "efficientnet_lite2", 1, LITE2),
         # ... and toward Lite0's 2-epoch minutes: 1.3 / 1.2 epochs, planned from the seventh session's times
         # (bench/results/time_to_quality.md), took 0.77x / 0.83x of Lite0's in one run; 1.7 / 1.45 from that run
         "plain-lite1-e1.3": Plain(64, "plain, Lite1, 1.3 epochs", "efficientnet_lite1", 1.3, LITE1),
         "plain-lite1-e1.7": Plain(64, "plain, Lite1, 1.7 epochs", "efficientnet_lite1", 1.7, LITE1),
         "plain-lite2-e1.2": Plain(64, "plain, Lite2, 1.2 epochs", "efficientnet_lite2", 1.2, LITE2),
         "plain-lite2-e1.45": Plain(64, "plain, Lite2, 1.45 epochs", "efficientnet_lite2", 1.45, LITE2),
         # what a user would do with v5's minutes instead (issue 33): the plain script trained longer (its
         # OneCycle schedule over the longer run), or as many plain models as v5 has members, averaged
         "plain-eq": Plain(64, "plain for v5's minutes (more epochs)", v5_minutes=True, line=LITE0),
         "plain-ens3": Plain(64, "plain x3, probabilities averaged (v5's member count)", members=3),
         # ... and with v6's budget (BUDGET: twice the plain script's epochs): trained twice as long, or two
         # plain models averaged
         "plain-2x": Plain(64, "plain for v6's minutes (2x the epochs)", factor=2, line=LITE0),
         "plain-ens2": Plain(64, "plain x2, probabilities averaged (v6's minutes)", members=2),
         # ... and for exactly v6's measured minutes at one bench epoch: v6 with three frozen blocks took 1.75x
         # the 1-epoch plain script (ratio of the medians, bench/results/longtail_v6_freeze3.md)
         "plain-e1.75": Plain(64, "plain, 1.75 epochs (v6's measured minutes)", epochs=1.75, line=LITE0)}
# train.py recipes that train a multiple of the bench's --epochs: v6 is one model given twice the plain
# script's epochs (its minutes are its budget: at most 2x the plain script's, issue 33)
BUDGET = {"v6": 2}
# distilled students, trained by bench/distill.py into the same runs folder (its teacher: the seed's v5 run);
# the recipe is the folder distill.py writes. Their time includes the teacher's: no student without its teacher.
STUDENTS = ("student-kd", "student-kd-e4")
# the figure's lines: rows that are one recipe at different budgets
LINES = {**{plain.name: plain.line for plain in PLAIN.values() if plain.line},
         "student-kd": "distilled student (2, 4 epochs)", "student-kd-e4": "distilled student (2, 4 epochs)"}
THRESHOLDS = (0.75, 0.80)
ORDER = [*(plain.name for plain in PLAIN.values()), "v4 stage 1 (best epoch, 80%)", "v4",
         "v5 select: best epoch + cRT + tau", "v5 select: last epoch + cRT + tau", "v5 select: EMA + cRT + tau",
         "v5 select: as chosen + cRT + tau", "v5 refit, stage 1 (100%, no cRT/tau)", "v5-refit", "v5", "v6", *STUDENTS,
         "v1", "v2", "v3"]


def seed_dir(args, init: str, seed: int) -> str:
    return os.path.join(args.runs, f"{init}-s{seed}")


def run_dir(args, init: str, seed: int, recipe: str) -> str:
    """fold0 of the recipe's run. v5's fold ensemble has its own --out (kfold3/), since train.py writes
    OUT/v5/ for both v5 and v5-refit."""
    if recipe == "v5":
        return str(layout.fold_dir(os.path.join(seed_dir(args, init, seed), "kfold3", "v5"), 0))
    if recipe in STUDENTS:
        return str(layout.fold_dir(os.path.join(seed_dir(args, init, seed), recipe, "v5"), 0))
    version = "v5" if recipe == "v5-refit" else recipe
    return str(layout.fold_dir(os.path.join(seed_dir(args, init, seed), version), 0))


def train(args, init: str, seed: int, recipe: str) -> None:
    """One train.py run (rerunning the same command skips a finished run, so the bench resumes), or the
    plain baseline (skipped when its probabilities exist)."""
    log = os.path.join(args.runs, f"{init}-s{seed}-{recipe}.log")
    if recipe in PLAIN:
        plain = PLAIN[recipe]
        for out, member_log, member_seed in plain_members(args, init, seed, recipe):
            with _LOCKS[out]:  # an ensemble's first model is also the plain recipe's: one job trains it
                if os.path.exists(out):
                    continue
                lists = write_plain_lists(args, init, seed, os.path.basename(os.path.dirname(out)))
                run_logged([sys.executable, os.path.join(REPO, "bench", "plain.py"), "--train", lists[0], "--test",
                            lists[1], "--num-classes", str(lists[2]), "--out", out,
                            "--epochs", str(plain_epochs(args, plain)), "--seed", str(member_seed),
                            "--model", plain.model or args.model, "--batch-size", str(plain.batch)],
                           member_log, args.threads)
        return
    if recipe in STUDENTS:  # it needs the finished teacher, which this pool may still be training
        if not os.path.exists(os.path.join(run_dir(args, init, seed, recipe), layout.METRICS)):
            raise SystemExit(f"{run_dir(args, init, seed, recipe)}: no finished student; train it first with "
                             f"python bench/distill.py --runs {args.runs} --seeds {seed}")
        return
    version, folds = recipe, ["--fold", "0", "--folds", "1"]
    if recipe == "v5":  # the preset as it is: 3 folds
        folds = ["--fold", "all"]
    if recipe == "v5-refit":
        version, folds = "v5", ["--fold", "0", "--folds", "1", "--refit", "true"]
    out = os.path.dirname(os.path.dirname(run_dir(args, init, seed, recipe)))  # train.py's OUT/<version>/fold0
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--version", version, *folds,
           "--model", args.model, "--pretrained", INITS[init], "--img-size", args.img_size,
           "--epochs", f"{BUDGET.get(recipe, 1) * args.epochs:g}", "--seed", str(seed), "--data", args.data,
           "--out", out, "--device", "cpu", "--workers", "1", *args.extra]
    run_logged(cmd, log, args.threads)


_DATA = {}
_LOCKS = collections.defaultdict(threading.Lock)


def dataset(args):
    """The data set as train.py loads it (same order, same decode cache)."""
    if "d" not in _DATA:
        _DATA["d"] = load_dataset(args.data, cache_dir="default", log=lambda *a: None)
    return _DATA["d"]


def bench_split(args, seed: int) -> dict:
    """The split train.py makes for `--folds 1 --seed seed` with its default fractions (checked against each
    run's split.json when scoring)."""
    return make_split(dataset(args).labels.numpy(), test_frac=0.2, num_folds=1, val_frac=0.2, seed=seed)


def plain_probs_path(args, init: str, seed: int, recipe: str = "plain") -> str:
    return os.path.join(seed_dir(args, init, seed), recipe, "test_probs.npy")


def write_plain_lists(args, init: str, seed: int, recipe: str) -> tuple[str, str, int]:
    """train.csv = every image outside the test split (v5's train + validation), test.csv = the test split."""
    data, split = dataset(args), bench_split(args, seed)
    folder = os.path.dirname(plain_probs_path(args, init, seed, recipe))
    os.makedirs(folder, exist_ok=True)
    test = np.array(split["test"])
    train_idx = np.setdiff1d(np.arange(len(data.paths)), test)
    names = []
    for name, idx in (("train.csv", train_idx), ("test.csv", test)):
        path = os.path.join(folder, name)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label"])
            writer.writerows((data.paths[i], int(data.labels[i])) for i in idx)
        names.append(path)
    return names[0], names[1], len(data.class_names)


def ensemble_train_s(run: str) -> float:
    """A fold ensemble's training time: its members' training loops and cRT."""
    split = json.load(open(os.path.join(run, layout.SPLIT)))
    total = 0.0
    for k in range(len(split["folds"])):
        m = json.load(open(os.path.join(layout.fold_dir(run, k), layout.METRICS)))
        total += m["train_time_s"] + m.get("crt_seconds", 0.0)
    return total


class Scorer:
    """Scores checkpoints on the run's test split (and validation, for the candidates' cRT and tau)."""

    def __init__(self, args):
        self.args = args

    def probs(self, record, model, positions) -> np.ndarray:
        pre = record.preprocessing
        return predict_dataset(model, dataset(self.args).images, positions, img_size=pre.img_size, mean=pre.mean,
                               std=pre.std, device=torch.device("cpu"), channels_last=True)

    @staticmethod
    def model(record, weights: dict | None = None) -> torch.nn.Module:
        model = create_model(record.model_name, record.num_classes, pretrained=None)
        model.load_state_dict(record.model if weights is None else weights)
        return model.eval().to(memory_format=torch.channels_last)

    def row(self, probs, test_idx, train_counts, tau: float, train_s: float) -> dict:
        """Test metrics of argmax(adjust(probs, tau)); head / medium / tail are the same classes in every row:
        grouped by their image count outside the test split (what v5 and the plain baseline train on)."""
        labels = dataset(self.args).labels.numpy()
        y = labels[test_idx]
        pred = adjust(probs, train_counts, tau).argmax(1)
        m = classification_metrics(y, pred, dataset(self.args).class_names)
        m.update(group_f1(y, pred, np.bincount(np.delete(labels, test_idx), minlength=len(train_counts))),
                 train_s=train_s, tau=tau)
        return m

    def ensemble_row(self, run: str, seed: int) -> dict:
        """A fold ensemble as predict.py uses it (imgcls.load: each member's tau, then the mean)."""
        split = json.load(open(os.path.join(run, layout.SPLIT)))
        if split["test"] != bench_split(self.args, seed)["test"]:
            raise SystemExit(f"{run}: its test split differs from the plain baseline's")
        test_idx = np.array(split["test"])
        probs = imgcls.load(run, device="cpu").probabilities(dataset(self.args).images[torch.as_tensor(test_idx)])
        return self.row(probs, test_idx, np.ones(probs.shape[1]), 0.0, ensemble_train_s(run))

    @functools.cache
    def teacher_pass_s(self, teacher: str, train_images: tuple, sample: int = 2048) -> float:
        """Seconds the teacher's one pass over the student's training images takes at the trainings' thread
        count (train.py computes it before the student's first epoch and does not count it): timed on `sample`
        of them and scaled, since the cost is linear in images; once per teacher and images (a seed's students
        share both)."""
        idx = torch.as_tensor(train_images)
        clf, threads = imgcls.load(teacher, device="cpu", batch_size=256), torch.get_num_threads()
        torch.set_num_threads(self.args.threads)
        try:
            clf.probabilities(dataset(self.args).images[idx[:64]])  # warm-up
            t0 = time.perf_counter()
            clf.probabilities(dataset(self.args).images[idx[:sample]])
            return (time.perf_counter() - t0) * len(idx) / min(sample, len(idx))
        finally:
            torch.set_num_threads(threads)

    def crt_and_tau(self, record, weights: dict, split: dict, train_s: float) -> dict:
        """The candidate `weights` through the run's cRT (on its training images) and tau (on validation)."""
        train_idx, val_idx = np.array(split["folds"][0]["train"]), np.array(split["folds"][0]["val"])
        test_idx, cfg, data = np.array(split["test"]), record.config, dataset(self.args)
        net, pre = self.model(record, weights), record.preprocessing
        crt(net, data.images, train_idx, data.labels, cfg, img_size=pre.img_size, mean=pre.mean, std=pre.std,
            device=torch.device("cpu"))
        counts = record.train_class_counts
        tau = choose_tau(self.probs(record, net, val_idx), data.labels.numpy()[val_idx], counts)[0]
        return self.row(self.probs(record, net, test_idx), test_idx, counts, tau, train_s)

    def rows_of_run(self, args, init: str, seed: int, recipe: str) -> dict[str, dict]:
        if recipe in PLAIN:  # an ensemble's probabilities are its models' mean, its time their sum
            split, members = bench_split(args, seed), plain_members(args, init, seed, recipe)
            probs = np.mean([np.load(out) for out, _, _ in members], axis=0)
            train_s = sum(json.loads(open(log).read().strip().splitlines()[-1])["train_s"] for _, log, _ in members)
            return {PLAIN[recipe].name: self.row(
                probs, np.array(split["test"]), np.ones(probs.shape[1]), 0.0, train_s)}
        if recipe == "v5":
            return {recipe: self.ensemble_row(os.path.dirname(run_dir(args, init, seed, recipe)), seed)}
        rdir = run_dir(args, init, seed, recipe)
        split = json.load(open(os.path.join(rdir, layout.SPLIT)))
        if split["test"] != bench_split(args, seed)["test"]:
            raise SystemExit(f"{rdir}: its test split differs from the plain baseline's")
        test_idx = np.array(split["test"])
        metrics = json.load(open(os.path.join(rdir, layout.METRICS)))
        train_s = metrics["train_time_s"] + metrics.get("crt_seconds", 0.0)
        if recipe in STUDENTS:
            teacher = os.path.dirname(run_dir(args, init, seed, "v5"))
            train_images = tuple(split["folds"][0]["train"])
            train_s += ensemble_train_s(teacher) + self.teacher_pass_s(teacher, train_images)
        best = checkpoint.read(layout.fold_model(rdir))
        tau = best.decision_tau if args.decision_tau is None else args.decision_tau
        rows = {recipe: self.row(self.probs(best, self.model(best), test_idx), test_idx, best.train_class_counts,
                                 tau, train_s)}
        if recipe == "v4":
            stage1 = checkpoint.read(os.path.join(rdir, layout.BEFORE_CRT))
            rows["v4 stage 1 (best epoch, 80%)"] = self.row(self.probs(stage1, self.model(stage1), test_idx),
                                                           test_idx, stage1.train_class_counts, 0.0,
                                                           metrics["train_time_s"])
        if recipe == "v5-refit":
            stage1 = checkpoint.read(os.path.join(rdir, layout.BEFORE_CRT))
            rows["v5 refit, stage 1 (100%, no cRT/tau)"] = self.row(
                self.probs(stage1, self.model(stage1), test_idx), test_idx, stage1.train_class_counts, 0.0,
                metrics["train_time_s"])
            sdir = os.path.join(rdir, layout.SELECT)
            smetrics = json.load(open(os.path.join(sdir, layout.METRICS)))
            s_train = smetrics["train_time_s"] + smetrics.get("crt_seconds", 0.0)
            last = checkpoint.read(os.path.join(sdir, layout.LAST))
            # last.pt keeps the EMA as AveragedModel's state: the model's own keys under "module."
            ema = {k[len("module."):]: v for k, v in (last.ema_model or {}).items() if k.startswith("module.")}
            candidates = {"best epoch": checkpoint.read(os.path.join(sdir, layout.BEST_EPOCH)).model,
                          "last epoch": last.model, "EMA": ema or None}
            for name, weights in candidates.items():
                if weights is not None:
                    rows[f"v5 select: {name} + cRT + tau"] = self.crt_and_tau(last, weights, split, s_train)
            # the selection stage's own result (the candidate it chose by validation loss, its cRT head and tau):
            # v5 without the refit
            shipped = checkpoint.read(layout.fold_model(sdir))
            rows["v5 select: as chosen + cRT + tau"] = self.row(
                self.probs(shipped, self.model(shipped), test_idx), test_idx, shipped.train_class_counts,
                shipped.decision_tau, s_train)
        return rows


def check_against_predict(rdir: str, row: dict, args) -> str:
    """predict.py's metrics for a run (the stored tau or --decision-tau, the test split) must equal the bench's
    row."""
    out = os.path.join(os.path.dirname(rdir), "bench-predict", layout.PREDICTIONS)
    cmd = [sys.executable, os.path.join(REPO, "predict.py"), "--run", os.path.dirname(rdir), "--device", "cpu",
           "--out", out, *(["--decision-tau", str(args.decision_tau)] if args.decision_tau is not None else [])]
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    metrics_path = next(p for p in (os.path.join(os.path.dirname(out), layout.METRICS),
                                    os.path.join(out[:-4], layout.METRICS)) if os.path.exists(p))
    theirs = json.load(open(metrics_path))["macro_f1"]
    if abs(theirs - row["macro_f1"]) > 1e-9:
        raise SystemExit(f"bench macro-F1 {row['macro_f1']} != predict.py's {theirs} for {rdir}")
    return f"{rdir}: predict.py macro-F1 {theirs:.4f} equals the bench's"


def summarise(results: dict) -> str:
    """results[(init, name)] = [row per seed] -> markdown: median [min, max] over seeds."""
    head = "| recipe | init | seeds | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * len(COLUMNS)]
    for (init, name), rows in results.items():
        cells = []
        for key, _ in COLUMNS:
            values = [r[key] for r in rows]
            med = statistics.median(values)
            fmt = "{:.0f}" if key == "train_s" else "{:.3f}"
            cells.append(fmt.format(med) + ("" if len(values) == 1 else
                                            f" [{fmt.format(min(values))}, {fmt.format(max(values))}]"))
        lines.append(f"| {name} | {init} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(results: dict, init: str, a: str, b: str) -> str | None:
    """Per-seed differences b - a in macro-F1 and accuracy (over the seeds both have), and the ratio of
    training times."""
    if (init, a) not in results or (init, b) not in results:
        return None
    of_a = {row["seed"]: row for row in results[(init, a)]}
    pairs = [(of_a[row["seed"]], row) for row in results[(init, b)] if row["seed"] in of_a]  # same seeds only
    d_f1 = [y["macro_f1"] - x["macro_f1"] for x, y in pairs]
    d_acc = [y["accuracy"] - x["accuracy"] for x, y in pairs]
    ratio = [y["train_s"] / x["train_s"] for x, y in pairs]
    seeds = " ".join(str(y["seed"]) for _, y in pairs)
    return (f"{init}: {b} - {a}, seeds {seeds}: macro-F1 {', '.join(f'{d:+.3f}' for d in d_f1)} (median "
            f"{statistics.median(d_f1):+.3f}); accuracy {', '.join(f'{d:+.3f}' for d in d_acc)} "
            f"(median {statistics.median(d_acc):+.3f}); train time x{statistics.median(ratio):.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="data set (any train.py --data layout)")
    p.add_argument("--recipes", default="v5,v5-refit,v4,plain",
                   help=f"v5, v5-refit, v4, {', '.join(PLAIN)}, {', '.join(STUDENTS)}, v1, v2, v3; "
                        f"comma-separated")
    p.add_argument("--inits", default="imagenet", help="imagenet (--pretrained default), scratch")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--img-size", default="80x60")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--v5-factor", type=float, default=3.7,
                   help="plain-eq trains this many times --epochs: v5's training time over the plain script's "
                        "(3.7 measured at 2 epochs, bench/results/longtail.md)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--seeds-for", nargs="+", default=[], metavar="RECIPE:SEEDS",
                   help="a recipe on fewer seeds than --seeds, e.g. v5-refit:0,1 student-kd:0,1")
    p.add_argument("--decision-tau", type=float, default=None, metavar="TAU",
                   help="score the one-model runs (v4, v6, students) at this tau instead of the one in their "
                        "shipped.pt: re-scores finished runs after a preset's fixed tau changed, without training")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (each gets --threads threads)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default=os.path.join(REPO, "runs-longtail"))
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "longtail.md"))
    p.add_argument("--figure", default=os.path.join(REPO, "bench", "results", "time_to_quality.png"),
                   help="test macro-F1 against training minutes, one colour per recipe ('' = none)")
    p.add_argument("extra", nargs="*", help="more train.py flags for every run, after --, e.g. -- --batch-size 8")
    args = p.parse_args(argv)

    recipes = args.recipes.split(",")
    try:
        seeds_for = {recipe: [int(s) for s in seeds.split(",")] for recipe, _, seeds in
                     (entry.partition(":") for entry in args.seeds_for)}
    except ValueError:
        p.error(f"--seeds-for {' '.join(args.seeds_for)}: expected RECIPE:SEED,SEED,... entries, e.g. v5-refit:0,1")
    plan = [(init, seed, recipe) for init in args.inits.split(",") for seed in args.seeds for recipe in recipes
            if seed in seeds_for.get(recipe, args.seeds)]
    # seed by seed, the longest (v5) first within a seed: two jobs finish together, and a bench stopped early
    # has whole seeds to score (rerun with fewer --seeds: finished trainings are skipped)
    plan.sort(key=lambda job: (job[1], recipes.index(job[2])))
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: train(args, *job), plan))
    wall = time.time() - t0

    scorer, results, notes = Scorer(args), {}, []
    for init, seed, recipe in sorted(plan, key=lambda job: (job[0], job[1])):
        for name, row in scorer.rows_of_run(args, init, seed, recipe).items():
            results.setdefault((init, name), []).append(dict(row, seed=seed))
        if recipe in ("v4", "v5", "v5-refit", "v6"):
            notes.append(check_against_predict(run_dir(args, init, seed, recipe), results[(init, recipe)][-1], args))
    results = {k: results[k] for init in args.inits.split(",") for name in ORDER if (k := (init, name)) in results}
    text = [f"# Long-tail recipes on {os.path.basename(os.path.normpath(args.data))}: {args.model} at "
            f"{args.img_size}, {args.epochs} epochs, one test split per seed, seeds {' '.join(map(str, args.seeds))}",
            "", "Command: `" + shlex.join(["python", "bench/longtail.py"] + (argv if argv is not None else sys.argv[1:]))
            + "`", "", f"Trainings took {wall / 60:.0f} min wall ({args.jobs} at a time, {args.threads} threads each)"
            + (f"; one-model runs re-scored at tau {args.decision_tau:+g} (train s: from each run's metrics, as "
               "trained)." if args.decision_tau is not None else "."),
            "Scored on the held-out test split (never trained on or tuned on); cells are the median over seeds "
            "[min, max]. train s: the training loops plus cRT (v5: its three folds; v5-refit: both stages).", "",
            summarise(results), ""]
    for init in args.inits.split(","):
        text += [line for line in (*(paired(results, init, plain.name, "v5") for plain in PLAIN.values()),
                                   *(paired(results, init, plain.name, "v6") for plain in PLAIN.values()),
                                   paired(results, init, "v5", "v6"),
                                   *(paired(results, init, LITE0, plain.name)
                                     for key, plain in PLAIN.items() if key != "plain"),
                                   paired(results, init, LITE0, "v4"),
                                   paired(results, init, "v4", "v5"),
                                   paired(results, init, "v5-refit", "v5")) if line]
    text += ["", *notes, ""]
    if args.figure:
        text += [f"Time to quality: {time_to_quality(results, args.figure)}", ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(text))
    print("\n".join(text))
    return 0


def span(minutes: list[float]) -> str:
    low, high = f"{min(minutes):.0f}", f"{max(minutes):.0f}"
    return low if low == high else f"{low}-{high}"


def time_to_quality(results: dict, path: str) -> str:
    """Test macro-F1 against training wall-clock minutes: each seed a dot, the median over seeds a ring, the
    rings of one recipe at several budgets (LINES) joined; dashed lines at THRESHOLDS. Rows without a training
    time of their own (the decompositions) are left out. Returns where each recipe stands against the
    thresholds, and the file written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    colours, lines, said = {}, {}, []
    for (init, name), rows in results.items():
        timed = [r for r in rows if r.get("train_s")]
        if not timed or name.startswith(("v5 select", "v5 refit,", "v4 stage 1")):
            continue
        minutes = [r["train_s"] / 60 for r in timed]
        f1 = [r["macro_f1"] for r in timed]
        key = (init, LINES.get(name, name))
        first = key not in colours
        dots = ax.scatter(minutes, f1, s=18, alpha=0.6, color=colours.get(key),
                          label=f"{key[1]} ({init})" if first else None)
        colours.setdefault(key, dots.get_facecolor()[0][:3])
        ring = (statistics.median(minutes), statistics.median(f1))
        ax.scatter(*ring, s=120, facecolors="none", edgecolors=[colours[key]], linewidths=1.5)
        lines.setdefault(key, []).append(ring)
        for t in THRESHOLDS:
            reached = [m for m, f in zip(minutes, f1) if f >= t]
            said.append(f"{name} ({init}), median {ring[1]:.3f} at {ring[0]:.0f} min: macro-F1 {t:.2f} "
                        + ("reached by the median" if ring[1] >= t else "not reached by the median")
                        + f", by {len(reached)} of {len(f1)} seeds"
                        + (f" (at {span(reached)} min)" if reached else ""))
    for key, rings in lines.items():
        if len(rings) > 1:
            ax.plot(*zip(*sorted(rings)), color=colours[key], linewidth=1)
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training wall-clock, minutes (this 2-core machine; 2 jobs at a time, 1 thread each)")
    ax.set_ylabel("macro-F1 on the held-out test split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    FigureCanvasAgg(fig)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    return "\n".join([path, *("- " + line for line in said)])


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: long-tail recipes at one budget, scored on the held-out test split, with seeds and spread.

Every recipe is a train.py preset run with the same model, input size, epochs, holdout split (--folds 1,
so every recipe trains on the same images) and seed, from ImageNet weights and/or random init:

    plain CE   the v4 run's stage-1 model (stage1.pt): cross-entropy, natural sampling, AdamW + OneCycle, V1's
               augmentation. It is exactly what `--version v4 --crt-sampler none --decision-tau 0` trains
               (tests/test_v4.py checks this), so CE and v4 are compared on the same features, seed by seed.
    v1, v2, v3 the write-up's recipes on the budget's backbone (v2's recipe without ConvNeXt-Base)
    v4         the project's recipe: plain CE, then cRT and the validation-chosen decision rule
and ablations computed from the same stage-1 model (in this process, with the project's functions):
    CE + tau            only the decision rule, tau chosen on validation
    CE + re-fit head    the classifier re-trained on frozen features with natural sampling, tau 0
    CE + cRT            class-balanced re-training, tau 0
    CE + cRT sqrt + tau square-root sampling in the re-training, tau chosen on validation

Columns: test accuracy, macro-F1, balanced accuracy, F1 of head (>= 500 training images), medium (50-499)
and tail (< 50) classes, worst-class F1 and training time; median over seeds with [min, max]. v4's row is
also checked against predict.py's own metrics for the same run. Results go to --out (markdown) as they come.

    python bench/longtail.py                                  # fashion-small, Lite0 80x60, 2 epochs, seeds 0 1
    python bench/longtail.py --inits imagenet --recipes v4,v1 --seeds 0 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from imgcls import checkpoint  # noqa: E402
from imgcls.data import load_dataset  # noqa: E402
from imgcls.decision import adjust, choose_tau  # noqa: E402
from imgcls.decoupling import extract_features, replace_classifier, retrain_classifier  # noqa: E402
from imgcls.inference import predict_dataset  # noqa: E402
from imgcls.metrics import classification_metrics, group_f1  # noqa: E402
from imgcls.models import create_model  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")
INITS = {"imagenet": "default", "scratch": "none"}
COLUMNS = [("accuracy", "acc"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "bal acc"), ("head_f1", "head F1"),
           ("medium_f1", "medium F1"), ("tail_f1", "tail F1"), ("worst_class_f1", "worst F1"),
           ("train_s", "train s")]


def run_dir(args, init: str, seed: int, recipe: str) -> str:
    return os.path.join(args.runs, f"{init}-s{seed}", recipe, "fold0")


def train(args, init: str, seed: int, recipe: str) -> None:
    """One train.py run (rerunning the same command skips a finished run, so the bench resumes)."""
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--version", recipe, "--fold", "0", "--folds", "1",
           "--model", args.model, "--pretrained", INITS[init], "--img-size", args.img_size,
           "--epochs", str(args.epochs), "--seed", str(seed), "--data", args.data,
           "--out", os.path.join(args.runs, f"{init}-s{seed}"), "--device", "cpu", "--workers", "1", *args.extra]
    log = os.path.join(args.runs, f"{init}-s{seed}-{recipe}.log")
    os.makedirs(args.runs, exist_ok=True)
    print("$ " + shlex.join(cmd), flush=True)
    with open(log, "a") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if done.returncode != 0:
        raise SystemExit(f"train.py failed (exit {done.returncode}); its output is in {log}")


class Scorer:
    """Scores checkpoints on the run's test split (and validation, for the ablations' tau) in this process."""

    def __init__(self, args):
        self.args, self.data = args, None

    def _load(self, record: checkpoint.Checkpoint):
        if self.data is None:
            self.data = load_dataset(self.args.data, size=tuple(record.preprocessing.storage_size),
                                     cache_dir=record.config["cache_dir"], log=lambda *a: None)
        return self.data

    def probs(self, record, model, positions) -> np.ndarray:
        pre = record.preprocessing
        return predict_dataset(model, self._load(record).images, positions, img_size=pre.img_size, mean=pre.mean,
                               std=pre.std, device=torch.device("cpu"), channels_last=True)

    def model(self, record) -> torch.nn.Module:
        model = create_model(record.model_name, record.num_classes, pretrained=None)
        model.load_state_dict(record.model)
        return model.eval().to(memory_format=torch.channels_last)

    def row(self, record, probs, test_idx, tau: float, train_s: float) -> dict:
        y = self._load(record).labels.numpy()[test_idx]
        pred = adjust(probs, record.train_class_counts, tau).argmax(1)
        m = classification_metrics(y, pred, record.class_names)
        m.update(group_f1(y, pred, record.train_class_counts), train_s=train_s, tau=tau)
        return m

    def rows_of_run(self, rdir: str, recipe: str) -> dict[str, dict]:
        split = json.load(open(os.path.join(rdir, "split.json")))
        test_idx, val_idx = np.array(split["test"]), np.array(split["folds"][0]["val"])
        train_idx = np.array(split["folds"][0]["train"])
        metrics = json.load(open(os.path.join(rdir, "metrics.json")))
        train_s = metrics["train_time_s"] + metrics.get("crt_seconds", 0.0)
        best = checkpoint.read(os.path.join(rdir, "best.pt"))
        rows = {recipe: self.row(best, self.probs(best, self.model(best), test_idx), test_idx,
                                 best.decision_tau, train_s)}
        if recipe != "v4":
            return rows
        stage1 = checkpoint.read(os.path.join(rdir, "stage1.pt"))
        net = self.model(stage1)
        data = self._load(stage1)
        counts = stage1.train_class_counts
        test_p, val_p = self.probs(stage1, net, test_idx), self.probs(stage1, net, val_idx)
        y_val = data.labels.numpy()[val_idx]
        rows["plain CE"] = self.row(stage1, test_p, test_idx, 0.0, metrics["train_time_s"])
        rows["CE + tau"] = self.row(stage1, test_p, test_idx, choose_tau(val_p, y_val, counts)[0],
                                    metrics["train_time_s"])
        pre = stage1.preprocessing
        feats = extract_features(net, data.images, train_idx, img_size=pre.img_size, mean=pre.mean, std=pre.std,
                                 device=torch.device("cpu"), batch_size=256)
        cfg = stage1.config
        for name, sampler, tuned in [("CE + re-fit head (natural)", "natural", False),
                                     ("CE + cRT (balanced), tau 0", "weighted", False),
                                     ("CE + cRT (sqrt) + tau", "sqrt", True)]:
            head = retrain_classifier(feats, data.labels[train_idx], stage1.num_classes, sampler=sampler,
                                      steps=cfg["crt_steps"], batch_size=cfg["crt_batch_size"], lr=cfg["crt_lr"],
                                      seed=cfg["seed"])
            replace_classifier(net, head)
            tau = choose_tau(self.probs(stage1, net, val_idx), y_val, counts)[0] if tuned else 0.0
            rows[name] = self.row(stage1, self.probs(stage1, net, test_idx), test_idx, tau, train_s)
        return rows


def check_against_predict(rdir: str, row: dict, args) -> str:
    """predict.py's metrics for the v4 run (its default: the stored tau) must equal the bench's v4 row."""
    out = os.path.join(os.path.dirname(rdir), "bench-predict", "predictions.csv")
    cmd = [sys.executable, os.path.join(REPO, "predict.py"), "--run", os.path.dirname(rdir), "--device", "cpu",
           "--out", out]
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    metrics_path = next(p for p in (os.path.join(os.path.dirname(out), "metrics.json"),
                                    os.path.join(out[:-4], "metrics.json")) if os.path.exists(p))
    theirs = json.load(open(metrics_path))["macro_f1"]
    if abs(theirs - row["macro_f1"]) > 1e-9:
        raise SystemExit(f"bench v4 macro-F1 {row['macro_f1']} != predict.py's {theirs} for {rdir}")
    return f"v4 {rdir}: predict.py macro-F1 {theirs:.4f} equals the bench's"


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
    """Per-seed differences b - a in macro-F1 and accuracy (same seed = same stage-1 features for CE/v4)."""
    if (init, a) not in results or (init, b) not in results:
        return None
    d_f1 = [y["macro_f1"] - x["macro_f1"] for x, y in zip(results[(init, a)], results[(init, b)])]
    d_acc = [y["accuracy"] - x["accuracy"] for x, y in zip(results[(init, a)], results[(init, b)])]
    return (f"{init}: {b} - {a}: macro-F1 {', '.join(f'{d:+.3f}' for d in d_f1)} (median "
            f"{statistics.median(d_f1):+.3f}); accuracy {', '.join(f'{d:+.3f}' for d in d_acc)} "
            f"(median {statistics.median(d_acc):+.3f})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="data set (any train.py --data layout)")
    p.add_argument("--recipes", default="v4,v1,v3,v2", help="presets, comma-separated; v4 adds plain CE")
    p.add_argument("--inits", default="imagenet,scratch", help="imagenet (--pretrained default), scratch")
    p.add_argument("--scratch-recipes", default="v4", help="recipes also run from scratch (default v4 = CE, v4)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--img-size", default="80x60")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (each gets --threads threads)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default=os.path.join(REPO, "runs-longtail"))
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "longtail.md"))
    p.add_argument("extra", nargs="*", help="more train.py flags for every run, after --, e.g. -- --batch-size 8")
    args = p.parse_args(argv)

    plan = []
    for init in args.inits.split(","):
        recipes = args.recipes.split(",") if init == "imagenet" else args.scratch_recipes.split(",")
        plan += [(init, seed, recipe) for recipe in recipes for seed in args.seeds]
    plan.sort(key=lambda job: job[2] != "v4")  # v4 (which also gives plain CE) first: the runs that matter most
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: train(args, *job), plan))
    wall = time.time() - t0

    scorer, results, notes = Scorer(args), {}, []
    for init, seed, recipe in plan:
        rdir = run_dir(args, init, seed, recipe)
        for name, row in scorer.rows_of_run(rdir, recipe).items():
            results.setdefault((init, name), []).append(row)
        if recipe == "v4":
            notes.append(check_against_predict(rdir, results[(init, "v4")][-1], args))
    order = ["plain CE", "CE + tau", "CE + re-fit head (natural)", "CE + cRT (balanced), tau 0",
             "CE + cRT (sqrt) + tau", "v4", "v1", "v2", "v3"]
    results = {k: results[k] for init in args.inits.split(",") for name in order if (k := (init, name)) in results}
    text = [f"# Long-tail recipes on {os.path.basename(os.path.normpath(args.data))}: {args.model} at "
            f"{args.img_size}, {args.epochs} epochs, holdout split, seeds {' '.join(map(str, args.seeds))}",
            "", "Command: `" + shlex.join(["python", "bench/longtail.py"] + (argv if argv is not None else sys.argv[1:]))
            + "`", "", f"Trainings took {wall / 60:.0f} min wall ({args.jobs} at a time, {args.threads} threads each).",
            "Scored on the held-out test split (never trained on or tuned on); cells are the median over seeds "
            "[min, max]. train s: the run's own training time (v4 and cRT rows include the re-training).", "",
            summarise(results), ""]
    text += [line for init in args.inits.split(",") for line in
             (paired(results, init, "plain CE", "v4"),) if line]
    text += ["", *notes, ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())

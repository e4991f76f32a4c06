#!/usr/bin/env python3
"""Screenings of one change to v5, on validation first (the test split is printed after, never chosen on),
reading bench/longtail.py's v5 runs (RUNS/imagenet-s<seed>/kfold3/v5):

    member    a change to the members' training (train.py flags), on v5's fold-0 member
    crt       variants of the second stage (cRT) on every member's features before cRT
    posthoc   decision rules (per-member or pooled tau, mirror views, per-class offsets) on the out-of-fold thirds

    python bench/screen.py member --runs RUNS --seeds 0 1 --label batch-16 -- --batch-size 16
    python bench/screen.py crt --runs RUNS --seeds 0 1 2 3 4
    python bench/screen.py posthoc --runs RUNS --seeds 0 1 2

Each subcommand's --help says what it measures. (They were bench/member_check.py, bench/crt_check.py and
bench/posthoc.py until 2026-12-06; the result files they wrote keep those names in their command lines.)
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

import imgcls  # noqa: E402
from imgcls import checkpoint  # noqa: E402
from imgcls.data import load_dataset  # noqa: E402
from imgcls.decision import TAU_GRID, adjust, choose_tau  # noqa: E402
from imgcls.decoupling import extract_features, retrain_classifier  # noqa: E402
from imgcls.inference import predict_dataset  # noqa: E402
from imgcls.metrics import classification_metrics  # noqa: E402
from imgcls.models import create_model  # noqa: E402
from imgcls.run import build_model, find_checkpoints, load_members, run_data  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")


# --- member: a change to the members' training, on v5's fold-0 member ----------------------------------

MEMBER_DOC = """A stage-1 change screened on one v5 member: does it train better than the preset? Validation first.

Trains v5's fold-0 member (`--fold 0` of the preset's 3 folds: two thirds of the images outside the test
split) with the preset plus the given train.py flags, and compares it with the same member as the preset
trains it, which bench/longtail.py already trained (RUNS/imagenet-s<seed>/kfold3/v5/fold0: same split, seed
and flags but the change). Scores: the member's own held-out third (after its cRT and tau, as train.py
reports it; this is what a change is chosen on) and the test split (the member alone with its tau, as
`predict.py --fold 0` uses it; reported, never chosen on).

    python bench/screen.py member --runs RUNS --seeds 0 1 --label lr-0.00052 -- --lr 5.2e-4
    python bench/screen.py member --runs RUNS --seeds 0 1 --label batch-32 -- --batch-size 32
    python bench/screen.py member --runs RUNS --seeds 0 1 --label batch-16 -- --batch-size 16

(The first is the lr finder's suggestion, 5.2e-4 against the preset's peak 1e-3: bench/results/lr_check.md;
the other two chose v5's batch size, each against the preset of its day: 64, then 32.)
"""


def preset_run(args, seed: int) -> str:
    return os.path.join(args.runs, f"imagenet-s{seed}", "kfold3", "v5")


def candidate_run(args, seed: int) -> str:
    return os.path.join(args.runs, f"imagenet-s{seed}", args.label, "v5")


def train_member(args, seed: int) -> None:
    out = os.path.dirname(candidate_run(args, seed))
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--version", "v5", "--fold", "0", *args.flags,
           "--model", "efficientnet_lite0", "--pretrained", "default", "--img-size", "80x60", "--epochs", "2",
           "--seed", str(seed), "--data", args.data, "--out", out, "--device", "cpu", "--workers", "1"]
    os.makedirs(out, exist_ok=True)
    with open(out + ".log", "a") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        raise SystemExit(f"{args.label} seed {seed} failed (exit {done.returncode}); see {out}.log")


def member_scores(run: str) -> dict:
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


def member_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/screen.py member", description=MEMBER_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="bench/longtail.py's --runs (its v5 runs are the preset's members)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--label", required=True, help="the candidate's name: its run folder and table row")
    p.add_argument("--out", default=None, help="the report (default bench/results/member_check-LABEL.md)")
    p.add_argument("flags", nargs="+", help="the change: train.py flags after --, e.g. -- --batch-size 32")
    args = p.parse_args(argv)
    args.out = args.out or os.path.join(REPO, "bench", "results", f"member_check-{args.label}.md")
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda seed: train_member(args, seed), args.seeds))
    change = " ".join(args.flags)
    rows = {"v5 preset": [member_scores(preset_run(args, s)) for s in args.seeds],
            f"v5 {change}": [member_scores(candidate_run(args, s)) for s in args.seeds]}
    a, b = rows.values()
    if any(x["test"] != y["test"] for x, y in zip(a, b)):
        raise SystemExit("the preset's and the candidate's runs have different test splits")
    lines = [f"# v5's stage 1 with `{change}` against the preset (fashion-small, Lite0 80x60, 2 epochs)", "",
             "Command: `python bench/screen.py member " + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
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


# --- crt: variants of the second stage on every member ----------------------------------------------------

CRT_DOC = """A change to v5's second stage (cRT) screened on every member of bench/longtail.py's v5 runs:
validation first, then the test split.

Each v5 member keeps the model it had before cRT (foldK/before_crt.pt; stage1.pt in runs before 2026-12-06).
This extracts that model's features once per member (its training two thirds, their horizontal mirror images,
its held-out third and the seed's test split; cached under --cache), then for each variant re-fits the
classifier with the project's own retrain_classifier, chooses tau on the member's held-out third with
choose_tau, as train.py does, and scores:
  validation  each member on its own held-out third (what a variant is chosen on; 3 members x seeds)
  test        the seed's 3-member ensemble as predict.py combines it (each member's tau, then the mean)
The preset's row re-derives what train.py produced; its validation macro-F1 is checked against each
member's metrics.json.

    python bench/screen.py crt --runs RUNS --seeds 0 1 2 3 4
"""

# name: (training features: "plain" or "flip" = plain + mirror images, retrain_classifier overrides).
# Fixed before any result; the preset is v5's cRT (square-root sampling, 600 steps, lr 0.1, weight decay 5e-4).
CRT_VARIANTS = {
    "preset": ("plain", {}),
    "mirror images too": ("flip", {}),
    "weight decay 5e-3": ("plain", {"weight_decay": 5e-3}),
    "2000 steps": ("plain", {"steps": 2000}),
    "lr 0.03": ("plain", {"lr": 0.03}),
}


def member_features(data, fold_dir: str, cache: str) -> dict:
    """Features of the member's stage-1 model (before cRT): train, train mirrored, val, test; cached."""
    if os.path.exists(cache):
        return torch.load(cache, weights_only=False)
    record = checkpoint.read(os.path.join(fold_dir, layout.BEFORE_CRT))
    split = json.load(open(os.path.join(fold_dir, layout.SPLIT)))
    fold = int(os.path.basename(fold_dir).removeprefix("fold"))
    net = create_model(record.model_name, record.num_classes, pretrained=None)
    net.load_state_dict(record.model)
    pre = record.preprocessing
    kw = dict(img_size=pre.img_size, mean=pre.mean, std=pre.std, device=torch.device("cpu"))
    idx = {"train": split["folds"][fold]["train"], "val": split["folds"][fold]["val"], "test": split["test"]}
    out = {f"{k}_idx": np.asarray(v) for k, v in idx.items()}
    for k, v in idx.items():
        out[k] = extract_features(net.eval(), data.images, v, **kw)
    mirrored = data.images[torch.as_tensor(idx["train"])].flip(-1)
    out["train_flip"] = extract_features(net, mirrored, np.arange(len(mirrored)), **kw)
    out["counts"] = np.asarray(record.train_class_counts)
    out["config"] = record.config
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    torch.save(out, cache)
    return out


def fit_and_score(f: dict, labels: np.ndarray, names, features: str, overrides: dict) -> dict:
    """The variant's head on the member: validation metrics after its tau, and its adjusted test probabilities."""
    cfg = f["config"]
    x, y = f["train"], torch.as_tensor(labels[f["train_idx"]])
    if features == "flip":
        x, y = torch.cat([x, f["train_flip"]]), torch.cat([y, y])
    preset = dict(sampler=cfg["crt_sampler"], steps=cfg["crt_steps"], batch_size=cfg["crt_batch_size"],
                  lr=cfg["crt_lr"], seed=cfg["seed"])
    head = retrain_classifier(x, y, len(names), settings=cfg, **dict(preset, **overrides))
    with torch.no_grad():
        val_p, test_p = (torch.softmax(head(f[k]), 1).numpy() for k in ("val", "test"))
    y_val = labels[f["val_idx"]]
    tau = choose_tau(val_p, y_val, f["counts"])[0]
    m = classification_metrics(y_val, adjust(val_p, f["counts"], tau).argmax(1), names)
    return {"val_f1": m["macro_f1"], "val_acc": m["accuracy"], "tau": tau,
            "test_probs": adjust(test_p, f["counts"], tau)}


def crt_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/screen.py crt", description=CRT_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="bench/longtail.py's --runs (RUNS/imagenet-sS/kfold3/v5)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cache", default=None, help="feature cache (default RUNS/crt_check_features)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "crt_check.md"))
    args = p.parse_args(argv)
    cache = args.cache or os.path.join(args.runs, "crt_check_features")
    data = load_dataset(args.data, log=lambda *a, **k: None)
    labels, names = data.labels.numpy(), data.class_names
    val = {v: [] for v in CRT_VARIANTS}          # per member
    test = {v: [] for v in CRT_VARIANTS}         # per seed (ensemble)
    for seed in args.seeds:
        run = os.path.join(args.runs, f"imagenet-s{seed}", "kfold3", "v5")
        members = sorted(d for d in os.listdir(run) if d.startswith("fold"))
        probs = {v: [] for v in CRT_VARIANTS}
        for member in members:
            f = member_features(data, os.path.join(run, member), os.path.join(cache, f"s{seed}-{member}.pt"))
            for name, (features, overrides) in CRT_VARIANTS.items():
                r = fit_and_score(f, labels, names, features, overrides)
                val[name].append(r)
                probs[name].append(r["test_probs"])
            shipped = json.load(open(os.path.join(run, member, layout.METRICS)))["macro_f1"]
            print(f"seed {seed} {member}: preset val macro-F1 {val['preset'][-1]['val_f1']:.4f} "
                  f"(train.py: {shipped:.4f}); " + ", ".join(
                      f"{n} {val[n][-1]['val_f1'] - val['preset'][-1]['val_f1']:+.3f}" for n in CRT_VARIANTS
                      if n != "preset"), flush=True)
        y_test = labels[f["test_idx"]]
        for name in CRT_VARIANTS:
            m = classification_metrics(y_test, np.mean(probs[name], 0).argmax(1), names)
            test[name].append({"f1": m["macro_f1"], "acc": m["accuracy"]})
    k = len(val["preset"]) // len(args.seeds)

    def seed_means(name, key):
        v = [r[key] for r in val[name]]
        return [float(np.mean(v[i * k:(i + 1) * k])) for i in range(len(args.seeds))]

    cfg = f["config"]  # every member of these runs trained with the same flags
    lines = [f"# v5's cRT variants on every member (fashion-small, {cfg['model']}, {cfg['epochs']} epochs, "
             f"batch {cfg['batch_size']})", "",
             "Command: `python bench/screen.py crt " + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             f"Seeds {' '.join(map(str, args.seeds))}, {k} members each, median [min, max] over seeds. Validation:"
             " each member on its held-out third after its cRT and tau, averaged over the seed's members (the "
             "choice is made here). Test: the seed's member ensemble (each member's tau, then the mean).", "",
             "| cRT variant | val macro-F1 | val acc | test macro-F1 | test acc | val - preset, per seed |",
             "|---|---:|---:|---:|---:|---|"]
    base = seed_means("preset", "val_f1")
    for name in CRT_VARIANTS:
        f1, acc = seed_means(name, "val_f1"), seed_means(name, "val_acc")
        diff = " ".join(f"{a - b:+.3f}" for a, b in zip(f1, base))
        lines.append(f"| {name} | {spread(f1)} | {spread(acc)} | {spread([t['f1'] for t in test[name]])} | "
                     f"{spread([t['acc'] for t in test[name]])} | {diff} |")
    lines += ["", "Test macro-F1 per seed: " + "; ".join(
        f"{n} " + " ".join(f"{t['f1']:.4f}" for t in test[n]) for n in CRT_VARIANTS)]
    publish(lines, args.out)
    return 0


# --- posthoc: the decision rule on the out-of-fold thirds -------------------------------------------------

POSTHOC_DOC = """Benchmark: v5's decision rule, chosen on validation only. Which rule to ship is decided here on the
out-of-fold thirds of bench/longtail.py's v5 runs, never on their test split.

A v5 run is three members; member k never saw fold k's third, so the three thirds together are a held-out
prediction for every image outside the test split (out-of-fold, OOF). Today each member chooses its own
decision tau on its own third. The alternatives compared:

    member / pooled   each member's tau chosen on its own third (today), or one tau for all three chosen on
                      the three thirds together (3x the images, so a less noisy choice)
    identity / flip   probabilities of the image, or the mean over the image and its mirror (predict.py --tta
                      with views identity,hflip)
    + offsets         after the tau, one additive offset per class on the adjusted log-probabilities, chosen
                      by coordinate ascent on macro-F1 (each class in turn over OFFSET_GRID, two passes; ties
                      to the smaller offset). tau is the one-parameter family offset_k = -tau * log prior_k;
                      free offsets are the plug-in form of the macro-F1-optimal rule (Narasimhan et al. 2015),
                      at the price of 45 numbers chosen on a few images per tail class.

Choosing and scoring on the same images flatters every rule, so each third is split in two halves per class
(A, B) at random: the rule is chosen on the A halves and scored on the B halves pooled (macro-F1 and accuracy
of the three members' predictions together), then the other way round; `--halvings` random splits per seed.
The table gives the mean over halvings and the difference to today's rule with its standard deviation over
halvings; seeds are separate rows, since a seed is a separate data split and training.

    python bench/screen.py posthoc --runs /work/notes/lt8/runs --seeds 0 1 2
    python bench/screen.py posthoc --runs RUNS --seeds 0 1 --halvings 5 --offsets --out bench/results/posthoc_offsets.md
"""

VIEWS = {"identity": ("identity",), "flip": ("identity", "hflip")}
RULES = [f"{who} / {view}" for view in VIEWS for who in ("member", "pooled")]
TODAY = "member / identity"
OFFSET_RULES = [f"{who} / {view} + offsets" for view in VIEWS for who in ("member", "pooled")]
OFFSET_GRID = np.round(np.arange(-3.0, 3.001, 0.25), 2)


def oof(run: str, data, cache: str) -> list[dict]:
    """Per member: its third's labels, training class counts and probabilities under each view (cached)."""
    if os.path.exists(cache):
        saved = np.load(cache)
        return [{k[len(f"m{i}_"):]: saved[k] for k in saved.files if k.startswith(f"m{i}_")}
                for i in range(int(saved["members"]))]
    split = json.load(open(os.path.join(run, layout.SPLIT)))
    parts = []
    for k, member in enumerate(load_members(find_checkpoints(run))):
        net, pre = build_model(member).to(memory_format=torch.channels_last), member.record.preprocessing
        third = np.asarray(split["folds"][k]["val"], dtype=np.int64)
        part = {"y": data.labels.numpy()[third], "counts": np.asarray(member.record.train_class_counts)}
        for name, views in VIEWS.items():
            part[name] = predict_dataset(net, data.images, third, img_size=pre.img_size, mean=pre.mean,
                                         std=pre.std, device=torch.device("cpu"), views=views, channels_last=True)
        parts.append(part)
    np.savez(cache, members=len(parts), **{f"m{i}_{k}": v for i, p in enumerate(parts) for k, v in p.items()})
    return parts


def stratified_half(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask holding half of each class (the odd one out to either side at random)."""
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        mask[idx[:(len(idx) + int(rng.integers(0, 2))) // 2]] = True
    return mask


def pooled_score(parts, masks, view: str, taus) -> tuple[float, float]:
    """Macro-F1 (scikit-learn's, as the project reports it) and accuracy of the members' predictions on their
    masked images, pooled."""
    y = np.concatenate([p["y"][m] for p, m in zip(parts, masks)])
    pred = np.concatenate([adjust(p[view][m], p["counts"], t).argmax(1) for p, m, t in zip(parts, masks, taus)])
    return float(f1_score(y, pred, average="macro", zero_division=0)), float((y == pred).mean())


def macro_f1(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """scikit-learn's macro-F1 (classes in labels or predictions, zero_division 0) from three bincounts:
    F1_k = 2 TP_k / (n_true_k + n_pred_k); fast enough for the offsets' thousands of evaluations."""
    n_true, n_pred = np.bincount(y, minlength=num_classes), np.bincount(pred, minlength=num_classes)
    tp = np.bincount(y[y == pred], minlength=num_classes)
    present = n_true + n_pred > 0
    return float((2 * tp[present] / (n_true + n_pred)[present]).mean())


def choose_offsets(scores: np.ndarray, y: np.ndarray, passes: int = 2) -> np.ndarray:
    """Per-class offsets b maximising macro_f1(y, argmax(scores + b)) by coordinate ascent over OFFSET_GRID."""
    n, c = scores.shape
    b, best = np.zeros(c), macro_f1(y, scores.argmax(1), c)
    for _ in range(passes):
        for k in range(c):
            others = scores + b
            others[:, k] = -np.inf
            runner_up = others.argmax(1)
            threshold = others[np.arange(n), runner_up]
            for g in OFFSET_GRID:  # class k wins where its score + g beats every other class
                f1 = macro_f1(y, np.where(scores[:, k] + g > threshold, k, runner_up), c)
                if f1 > best + 1e-12 or (abs(f1 - best) <= 1e-12 and abs(g) < abs(b[k])):
                    b[k], best = g, max(best, f1)
    return b


def log_adjusted(probs: np.ndarray, counts, tau: float) -> np.ndarray:
    return np.log(np.clip(adjust(probs, counts, tau).astype(np.float64), 1e-30, None))


def offsets_score(parts, chosen_on, scored_on, rule: str) -> tuple[float, float]:
    """An offsets rule: the tau as in `rule` without offsets, then offsets chosen on `chosen_on` (per member,
    or one set on the pooled thirds), scored on `scored_on` as pooled_score does."""
    base = rule.replace(" + offsets", "")
    view, taus = base.split(" / ")[1], choose(parts, chosen_on, base)
    num_classes = len(parts[0]["counts"])
    fit = [(log_adjusted(p[view][m], p["counts"], t), p["y"][m]) for p, m, t in zip(parts, chosen_on, taus)]
    if rule.startswith("member"):
        offsets = [choose_offsets(s, y) for s, y in fit]
    else:
        pooled = choose_offsets(np.concatenate([s for s, _ in fit]), np.concatenate([y for _, y in fit]))
        offsets = [pooled] * len(parts)
    y = np.concatenate([p["y"][m] for p, m in zip(parts, scored_on)])
    pred = np.concatenate([(log_adjusted(p[view][m], p["counts"], t) + b).argmax(1)
                           for p, m, t, b in zip(parts, scored_on, taus, offsets)])
    return macro_f1(y, pred, num_classes), float((y == pred).mean())


def choose(parts, masks, rule: str) -> list[float]:
    """The taus `rule` picks on the masked images: one per member, or one for all chosen on the pool."""
    who, view = rule.split(" / ")
    if who == "member":
        return [choose_tau(p[view][m], p["y"][m], p["counts"])[0] for p, m in zip(parts, masks)]
    scores = {tau: pooled_score(parts, masks, view, [tau] * len(parts))[0] for tau in TAU_GRID}
    best = max(scores, key=lambda t: (round(scores[t], 12), -abs(t)))  # ties: the least change, as choose_tau
    return [best] * len(parts)


def nested(parts, halvings: int, seed: int, rules) -> dict[str, np.ndarray]:
    """{rule: (2 * halvings) x 2 array of (macro-F1, accuracy) on the half the rule was not chosen on}."""
    rng = np.random.default_rng(seed)
    out = {rule: [] for rule in rules}
    for _ in range(halvings):
        a = [stratified_half(p["y"], rng) for p in parts]
        for chosen_on, scored_on in ((a, [~m for m in a]), ([~m for m in a], a)):
            for rule in rules:
                out[rule].append(offsets_score(parts, chosen_on, scored_on, rule) if rule.endswith("offsets")
                                 else pooled_score(parts, scored_on, rule.split(" / ")[1],
                                                   choose(parts, chosen_on, rule)))
    return {rule: np.array(v) for rule, v in out.items()}


def posthoc_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/screen.py posthoc", description=POSTHOC_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="bench/longtail.py's --runs (its v5 runs under "
                                                 "imagenet-s<seed>/kfold3/v5)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--halvings", type=int, default=10)
    p.add_argument("--offsets", action="store_true", help="also the per-class offset rules (slow: minutes a seed)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "posthoc.md"))
    args = p.parse_args(argv)
    data = load_dataset(args.data, cache_dir="default", log=lambda *a: None)
    lines = ["# v5's decision rule on validation (out-of-fold thirds, never the test split)", "",
             "Command: `python bench/screen.py posthoc " + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             f"Chosen on half of each third, scored on the other half, {args.halvings} random halvings x 2 "
             "directions per seed; mean over those, and the difference to today's rule (member / identity) "
             "with its standard deviation over halvings.", "",
             "| seed | rule | macro-F1 | vs today | acc | vs today |", "|---:|---|---:|---:|---:|---:|"]
    rules = RULES + (OFFSET_RULES if args.offsets else [])
    gains = {rule: [] for rule in rules}
    for seed in args.seeds:
        run = os.path.join(args.runs, f"imagenet-s{seed}", "kfold3", "v5")
        scores = nested(oof(run, data, os.path.join(run, "bench-posthoc-oof.npz")), args.halvings, seed, rules)
        for rule in rules:
            diff = scores[rule] - scores[TODAY]
            gains[rule].append(diff.mean(axis=0))
            lines.append(f"| {seed} | {rule} | {scores[rule][:, 0].mean():.4f} | {diff[:, 0].mean():+.4f} "
                         f"(sd {diff[:, 0].std():.4f}) | {scores[rule][:, 1].mean():.4f} | "
                         f"{diff[:, 1].mean():+.4f} |")
    lines += ["", "Per rule, the mean difference to today's over seeds (macro-F1, accuracy):", ""]
    lines += [f"- {rule}: {np.mean([g[0] for g in gains[rule]]):+.4f}, {np.mean([g[1] for g in gains[rule]]):+.4f}"
              f" (per seed {', '.join(f'{g[0]:+.4f}' for g in gains[rule])})" for rule in rules if rule != TODAY]
    publish(lines, args.out)
    return 0


COMMANDS = {"member": member_main, "crt": crt_main, "posthoc": posthoc_main}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__ + f"\nusage: bench/screen.py {{{','.join(COMMANDS)}}} [--help | ARGS]", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Benchmark: v5's decision rule, chosen on validation only. Which rule to ship is decided here on the
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

    python bench/posthoc.py --runs /work/notes/lt8/runs --seeds 0 1 2
    python bench/posthoc.py --runs RUNS --seeds 0 1 --halvings 5 --offsets --out bench/results/posthoc_offsets.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from common import REPO, layout, publish  # noqa: E402,F401  (first: it puts the checkout on the import path)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from imgcls.data import load_dataset  # noqa: E402
from imgcls.decision import TAU_GRID, adjust, choose_tau  # noqa: E402
from imgcls.inference import predict_dataset  # noqa: E402
from imgcls.run import build_model, find_checkpoints, load_members  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
             "Command: `python bench/posthoc.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
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


if __name__ == "__main__":
    raise SystemExit(main())

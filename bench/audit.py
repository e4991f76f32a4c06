"""Benchmark: does the audit find injected label noise, and does training again without it pay?

For each seed: a clean v5 run (its split is the one every run of the seed uses); then, for each noise setting,
labels of the images outside the test split are flipped (uniform: to any other class; confused: to the class
the clean run's out-of-fold predictions confuse it with most), v5 trains on them with the clean split, and
`audit.py` flags label issues on its out-of-fold probabilities. Scored against the injected flips (precision,
recall, F1 of the flagged set, on the images that have an out-of-fold probability), side by side with
cleanlab's `find_label_issues` on the same probabilities (the independent reference) and the simplest baseline
(flag where the out-of-fold argmax differs from the label). Then v5 trains again without the flagged images
(`train.py --exclude`, the same test split) and all three runs are scored on the clean test split: the
recovered share of the macro-F1 the noise cost.

    python bench/audit.py --data ../shared/data/fashion-small --out /work/runs-audit --seeds 0 1 2 \
        --rates 0.05 0.15 --kinds uniform confused -- --epochs 1

`--jobs 2 --threads 1` measures two seeds at once, each training on one core: on 2 cores more images per
second in all than one training on two threads (why bench/longtail.py runs so too); it changes the minutes,
not the recipe.

Rows accumulate in OUT/rows.json: a run on other seeds or settings adds to the table, and a setting measured
again replaces its earlier row.

The data is read through a path,label manifest written from the data set's own index, so the clean and the
noisy runs list the same files in the same order and share the split and the decode cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common import REPO, publish, run_logged, spread  # noqa: E402,F401  (first: it puts the checkout on the import path)


from imgcls import confident, run  # noqa: E402
from imgcls.audit import AGREEING, NEIGHBOURS, SHARE  # noqa: E402
from imgcls.data import load_dataset  # noqa: E402
from imgcls.data.splits import save_split  # noqa: E402
from imgcls.metrics import GROUPS, classification_metrics  # noqa: E402

KINDS = ("uniform", "confused")
STEADY = 5  # test images a class needs to count in the steady score (steady_f1)


def write_manifest(path: str, paths: list[str], labels: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(zip(paths, labels))


def most_confused(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """For each class, the other class its images are most often predicted as (out of fold); itself + 1 when
    none is (so that a flip always changes the label)."""
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, probs.argmax(1)), 1)
    np.fill_diagonal(confusion, -1)
    target = confusion.argmax(1)
    none = confusion.max(1) <= 0
    target[none] = (np.arange(k)[none] + 1) % k
    return target


def inject(labels: np.ndarray, candidates: np.ndarray, rate: float, kind: str, k: int, confused_with, seed: int):
    """New labels with round(rate * len(candidates)) of the candidates flipped; returns (labels, flipped)."""
    rng = np.random.default_rng(seed)
    flipped = rng.choice(candidates, size=int(round(rate * len(candidates))), replace=False)
    noisy = labels.copy()
    if kind == "uniform":
        shift = rng.integers(1, k, size=len(flipped))  # any other class
        noisy[flipped] = (labels[flipped] + shift) % k
    else:
        noisy[flipped] = confused_with[labels[flipped]]
    return noisy, np.sort(flipped)


SUGGESTION = 0.5  # a suggested label the model gives at least even odds


def exclusion_rules(labels: np.ndarray, probs: np.ndarray, flagged: np.ndarray, truth: np.ndarray,
                    to_exclude: np.ndarray, votes: np.ndarray | None = None) -> dict:
    """Candidate sets to train again without, each a part of the flagged set (masks over the images given).
    Why: excluding every flag drops the clean images of the tail classes that a model trained on noisy labels
    is unsure of, and a tail class cannot spare them (measured since: sparing them did not help, the oracle
    recovers 67% and every flag 29%, docs/audit.md "Which images to exclude"). Side by side:
    - all: every flagged image (what `train.py --exclude audit/label_issues.csv` does);
    - both: confident learning's filter_by="both" (`audit.py --filter-by both`): the flags that pruning by
      class flags too, fewer and more precise (with `flagged` the default's flags, a part of them);
    - below-chance: the "both" flags whose given label has an out-of-fold probability below chance (1/K):
      a label the members find less likely than a guess; the hard clean images a flag set takes along (the
      ones a tail or medium class cannot spare) mostly get more than that, a flip under uniform noise less;
    - confident-suggestion: only flags whose suggested label (the likeliest other class) has p >= 0.5;
    - not-own-class: only flags that are not confidently their given class (p_given below the class's
      confident-learning threshold t_given): a tail class swamped by flips into it has a low t, and its real
      images clear it while the flips do not;
    - neighbours: audit.py's exclude.csv (`to_exclude`): the flags that their 20 nearest images do not back
      (fewer than 2 under the given label, or, where the confident joint says noise concentrates on the pair of
      labels, fewer than half as many as under the suggested one): a flip sits among look-alikes of its true
      class, a real image of a tail class swamped by flips among its own few (the rule audit.py ships, chosen on
      these flags);
    - neighbours-everywhere: the same look-alike rule with its second test (fewer than half as many under the
      given label as under the suggested one) on every flag, not only where the confident joint says noise
      concentrates on the pair (exclude.csv's rule of 50c8c42, kept to compare);
    - relabel: neighbours' images, those in audit.py's relabel.csv trained under their suggested label instead of
      dropped (`train.py --exclude audit/exclude.csv --relabel audit/relabel.csv`): the mask is every image
      changed; dropping a flip also takes an image from its true class, and relabelling gives it back;
    - oracle: exactly the injected flips (what exclusion can recover at best; not available to a user)."""
    rows = np.arange(len(labels))
    others = probs.copy()
    others[rows, labels] = -1
    own = probs[rows, labels] < confident.thresholds(labels, probs)[labels] - confident.EPS
    both = confident.label_issues(labels, probs, filter_by="both")
    everywhere = {}
    if votes is not None:
        given, suggested = np.asarray(votes).T
        everywhere["neighbours-everywhere"] = flagged & ((given < AGREEING) | (given < SHARE * suggested))
    return {"all": flagged, "both": both, "below-chance": both & (probs[rows, labels] < 1 / probs.shape[1]),
            "confident-suggestion": flagged & (others.max(1) >= SUGGESTION),
            "not-own-class": flagged & own, "neighbours": to_exclude.copy(), **everywhere,
            "relabel": to_exclude.copy(), "oracle": truth.copy()}


RULES = ("all", "both", "below-chance", "confident-suggestion", "not-own-class", "neighbours",
         "neighbours-everywhere", "relabel", "oracle")


def relabel_positions(paths: list[str], relabel: dict) -> dict:
    """position -> new label name of the images a relabel.csv lists (path -> label), over the bench's paths."""
    return {i: relabel[q] for i, q in enumerate(paths) if q in relabel}


def relabel_counts(moved: dict, labels: np.ndarray, names: list[str]) -> dict:
    """How many images the relabel list moves, and how many of them to their clean (true) label."""
    return {"relabelled": len(moved), "restored": sum(names[labels[i]] == to for i, to in moved.items())}


def prf(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    hit = int((flagged & truth).sum())
    p = hit / max(int(flagged.sum()), 1)
    r = hit / max(int(truth.sum()), 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def train(data: str, out: str, seed: int, extra: list[str], log: str, threads: int | None = None) -> str:
    """train.py --version v5 --fold all into out; returns the run folder (skips a finished run)."""
    run_logged([sys.executable, os.path.join(REPO, "train.py"), "--version", "v5", "--fold", "all", "--data", data,
                "--out", out, "--seed", str(seed), *extra], log, threads, cwd=REPO)
    return os.path.join(out, "v5")


def audit(run_dir: str, extra: list[str], log: str, threads: int | None = None, reuse: bool = False) -> dict:
    """The run's out-of-fold probabilities from audit.py (reuse: those of an audit already in the run)."""
    if not (reuse and os.path.exists(os.path.join(run_dir, run.AUDIT, run.OUT_OF_FOLD))):
        run_logged([sys.executable, os.path.join(REPO, "audit.py"), "--run", run_dir, *extra], log, threads,
                   cwd=REPO)
    oof = np.load(os.path.join(run_dir, run.AUDIT, run.OUT_OF_FOLD))
    out = {k: oof[k] for k in ("probs", "positions", "labels")}
    listing = os.path.join(run_dir, run.AUDIT, run.EXCLUDE)
    if os.path.exists(listing):  # an audit older than exclude.csv (reused) has none: so has no "neighbours" rule
        with open(listing, newline="") as fh:
            listed = {r["path"] for r in csv.DictReader(fh)}
        out["to_exclude"] = np.isin(oof["paths"], list(listed))  # audit.py's exclude.csv, over the same images
    moved = os.path.join(run_dir, run.AUDIT, run.RELABEL)
    if os.path.exists(moved):  # path -> the label relabel.csv gives it (an audit older than the file: none)
        with open(moved, newline="") as fh:
            out["relabel"] = {r["path"]: r["label"] for r in csv.DictReader(fh)}
    with open(os.path.join(run_dir, run.AUDIT, run.LABEL_ISSUES), newline="") as fh:
        votes = {r["path"]: (int(r["neighbours_given"]), int(r["neighbours_suggested"]))
                 for r in csv.DictReader(fh) if "neighbours_given" in r}
    if votes:  # the look-alike counts of each flag (an audit older than them has none)
        out["votes"] = np.array([votes.get(q, (NEIGHBOURS, 0)) for q in oof["paths"]])
    return out


def test_scores(run_dir: str, images, labels: np.ndarray, test: np.ndarray, class_names) -> dict:
    import imgcls
    clf = imgcls.load(run_dir, device="cpu")
    probs = clf.probabilities(images[test])
    names = {c: i for i, c in enumerate(class_names)}
    # the run's own class list may lack classes the noise or the exclusion emptied: map to the clean list
    mapped = np.array([names[c] for c in clf.classes])
    pred = mapped[probs.argmax(1)]
    return classification_metrics(labels[test], pred, class_names)


def steady_f1(scores: dict, min_support: int = STEADY) -> float:
    """Macro-F1 over the classes with at least min_support test images (classification_metrics's per_class):
    the same score without the classes of 1-4 test images, where one image moves a class's F1 from 0 to 1 and
    macro-F1 by 1/41 (0.024), about what 5% noise costs in all."""
    f1 = [c["f1"] for c in scores["per_class"].values() if c["support"] >= min_support]
    return float(np.mean(f1))


def retrained_folder(folder: str, rule: str) -> str:
    """Where a setting's retraining without a rule's images goes ("<rule>, same steps": --same-steps's)."""
    name, same = rule.removesuffix(", same steps"), rule.endswith(", same steps")
    return os.path.join(folder, "excluded" if name == "all" else f"excluded-{name}") + ("-same-steps" if same else "")


def rescore(out: str, rows: list[dict], data, rules, wanted=lambda row: True, save=lambda rows: None,
            log=print) -> None:
    """Fill the steady scores (steady_f1) of rows measured before they existed, from their runs' folders under
    out: the clean and noisy runs and the retrainings of the rules given, in the rows wanted. Checks that each
    folder still gives the row's macro-F1. Each score is saved as it lands (save), so a stopped rescore goes on
    where it stopped: one run's test predictions take about a minute on 2 cores."""
    images, labels, names = data.images, data.labels.numpy(), list(data.class_names)
    known = {}  # folder -> steady score: a seed's clean run stands in every row of that seed
    for r in filter(wanted, rows):
        base = os.path.join(out, f"s{r['seed']}")
        test = np.asarray(json.load(open(os.path.join(base, "clean", "v5", run.SPLIT)))["test"], dtype=np.int64)
        runs = [("clean", os.path.join(base, "clean"), r, "clean_f1", "clean_steady"),
                ("noisy", os.path.join(base, r["setting"], "noisy"), r, "noisy_f1", "noisy_steady")]
        runs += [(rule, retrained_folder(os.path.join(base, r["setting"]), rule), v, "excluded_f1", "excluded_steady")
                 for rule, v in r.get("rules", {}).items() if rule in rules and v.get("excluded_f1") is not None]
        for what, where, into, f1_key, steady_key in runs:
            if into.get(steady_key) is not None:
                known[where] = into[steady_key]
                continue
            if where in known:
                into[steady_key] = known[where]
                continue
            scores = test_scores(os.path.join(where, "v5"), images, labels, test, names)
            if abs(scores["macro_f1"] - into[f1_key]) > 1e-9:
                raise SystemExit(f"{where}: macro-F1 {scores['macro_f1']:.4f}, not the row's {into[f1_key]:.4f} "
                                 f"({r['setting']}, seed {r['seed']}, {what}): not the run that was scored")
            into[steady_key] = known[where] = steady_f1(scores)
            save(rows)
            log(f"rescored {r['setting']} seed {r['seed']} {what}: macro-F1 {into[f1_key]:.4f}, steady "
                f"{into[steady_key]:.4f}")


def flags_by_group(flagged: np.ndarray, truth: np.ndarray, true_labels: np.ndarray, train_counts) -> dict:
    """Where the flagged set falls, by the group (head / medium / tail, imgcls.metrics.GROUPS) of each image's
    true class: flagged images, how many of them were injected flips, and how many of the group's clean images
    were flagged (what an exclusion takes from the group). Pure; counts over the images given."""
    counts = np.asarray(train_counts)[true_labels]
    out = {}
    for name, low, high in GROUPS:
        member = (counts >= low) & (counts < (high if high is not None else np.inf))
        clean = member & ~truth
        out[name] = {"flagged": int((flagged & member).sum()), "flips_flagged": int((flagged & truth & member).sum()),
                     "clean": int(clean.sum()), "clean_flagged": int((flagged & clean).sum())}
    return out


def merged(previous: list[dict], rows: list[dict]) -> list[dict]:
    """The rows of an earlier run of the bench (rows.json) that this run did not measure again, then this
    run's: a bench run on other seeds or settings adds to the table instead of replacing it. A setting measured
    again keeps (filled into this run's row) the scores of exclusion rules trained again only before."""
    again = {(r["seed"], r["setting"]): r for r in rows}
    for old in previous:  # a rule trained again before but not now keeps its earlier score
        new = again.get((old["seed"], old["setting"]))
        if new and "rules" in new:  # rules trained again only before (e.g. with --same-steps) keep their rows
            new["rules"].update({k: v for k, v in old.get("rules", {}).items() if k not in new["rules"]})
        for name, rule in (new or {}).get("rules", {}).items():
            before = old.get("rules", {}).get(name, {})
            if rule.get("excluded_f1") is None and before.get("excluded_f1") is not None:
                rule.update({k: before[k] for k in ("excluded_f1", "recovered", "excluded_steady") if k in before})
        if new and "all" in new.get("rules", {}):
            new.update(excluded_f1=new["rules"]["all"]["excluded_f1"], recovered=new["rules"]["all"]["recovered"])
    return [r for r in previous if (r["seed"], r["setting"]) not in again] + rows


def split_without(split: dict, dropped: np.ndarray, n: int) -> dict:
    """The same split with the dropped positions removed and the others renumbered."""
    keep = np.setdiff1d(np.arange(n), dropped)
    new = np.full(n, -1)
    new[keep] = np.arange(len(keep))

    def move(positions):
        positions = np.asarray(positions, dtype=np.int64)
        return [int(new[p]) for p in positions if new[p] >= 0]
    return dict(split, test=move(split["test"]),
                folds=[{"train": move(f["train"]), "val": move(f["val"])} for f in split["folds"]])


def montage(items, path: str, columns: int = 10, title: str = "") -> None:
    """A grid of (uint8 3 x H x W image, caption) as a PNG, to look at by eye."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = (len(items) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.7, rows * 2.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption) in zip(axes.flat, items):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(caption, fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def look(run_dir: str, out_dir: str, seed: int = 0) -> None:
    """Pictures of an audited run: the top 30 label issues, and 12 random near-duplicate groups (4 images
    each at most), with the test score of the run with and without the test images in crossing groups."""
    import imgcls
    data_run = imgcls.load(run_dir, device="cpu")
    cfg = data_run.members[0].config
    data = load_dataset(cfg.data, label_col=cfg.label_col, cache_dir="default", log=lambda *a: None)
    where = {q: i for i, q in enumerate(data.paths)}
    folder = os.path.join(run_dir, run.AUDIT)
    issues = list(csv.DictReader(open(os.path.join(folder, run.LABEL_ISSUES))))[:30]
    montage([(data.images[where[r["path"]]], f"#{r['rank']} {os.path.basename(r['path'])}\ngiven {r['given']}\n"
              f"suggested {r['suggested']}") for r in issues], os.path.join(out_dir, "audit-label-issues.png"),
            title="The audit's top 30 label issues (v5, 1 epoch, seed 0)")
    groups: dict[str, list[dict]] = {}
    for r in csv.DictReader(open(os.path.join(folder, run.DUPLICATES))):
        groups.setdefault(r["group"], []).append(r)
    near = [g for g in groups.values() if g[0]["kind"] == "near"]
    rng = np.random.default_rng(seed)
    chosen = [near[i] for i in rng.choice(len(near), size=min(12, len(near)), replace=False)]
    items = []
    for g in chosen:
        for r in (g + [None] * 4)[:4]:
            items.append((data.images[where[r["path"]]], f"g{r['group']} {r['split']} {r['label']}\n"
                          f"cos {float(r['similarity']):.3f}") if r else (torch_blank(data.images[0]), ""))
    montage(items, os.path.join(out_dir, "audit-near-duplicates.png"), columns=8,
            title="12 random near-duplicate groups (cosine >= threshold), up to 4 images each")


def leak_effect(run_dir: str) -> list[str]:
    """The run's test scores on its whole test split and without the test images that sit in a duplicate
    group with training images (audit/duplicates.csv)."""
    import imgcls
    clf = imgcls.load(run_dir, device="cpu")
    cfg = clf.members[0].config
    data = load_dataset(cfg.data, label_col=cfg.label_col, cache_dir="default", log=lambda *a: None)
    test = np.asarray(json.load(open(os.path.join(run_dir, run.SPLIT)))["test"], dtype=np.int64)
    where = {q: i for i, q in enumerate(data.paths)}
    leaked = {where[r["path"]] for r in csv.DictReader(open(os.path.join(run_dir, run.AUDIT, run.DUPLICATES)))
              if r["crosses_test"] == "True" and r["split"] == "test"}
    probs = clf.probabilities(data.images[test])
    labels = data.labels.numpy()
    lines = ["| test images | count | accuracy | macro-F1 |", "|---|---:|---:|---:|"]
    for name, keep in [("all", np.ones(len(test), bool)), ("without those in groups across the split",
                                                           ~np.isin(test, list(leaked))),
                       ("only those", np.isin(test, list(leaked)))]:
        m = classification_metrics(labels[test[keep]], probs[keep].argmax(1), data.class_names)
        lines.append(f"| {name} | {int(keep.sum())} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |")
    return lines


def torch_blank(like):
    return like * 0 + 255


def pooled_recovery(rows: list[dict], rule: str, score: str = "f1") -> dict | None:
    """The share of the noise's cost that training again without the rule's images recovered, pooled over the
    rows (runs: seeds, or seeds x settings) where the rule was trained again: the mean gain over the mean cost.
    A run's own share divides by its cost, which at 5% noise is about one training's own spread, so it swings
    past 0 and 1; the pooled share weighs each run by what its noise cost. score: "f1" (macro-F1) or "steady"
    (steady_f1; the rows that have it). None where no row trained the rule again."""
    clean, noisy, again = f"clean_{score}", f"noisy_{score}", f"excluded_{score}"
    done = [r for r in rows if r.get("rules", {}).get(rule, {}).get(again) is not None and r.get(clean) is not None]
    if not done:
        return None
    costs = [r[clean] - r[noisy] for r in done]
    gains = [r["rules"][rule][again] - r[noisy] for r in done]
    cost, gain = float(np.mean(costs)), float(np.mean(gains))
    return {"runs": len(done), "settings": sorted({r.get("setting") for r in done}, key=str), "cost": cost,
            "gain": gain, "share": gain / cost if cost > 0 else None,
            "per_run": [g / c if c > 0 else None for g, c in zip(gains, costs)]}


def report(rows: list[dict], command: str, path: str) -> None:
    """The table of the settings measured so far: written after each one, so a bench stopped early (or
    `--table-only`) still has its table."""
    lines = ["# The audit against injected label noise (`bench/audit.py`)", "", command, "",
             "| setting | seeds | flagged F1: imgcls | cleanlab | argmax baseline | identical to cleanlab | "
             "imgcls --filter-by both | imgcls exclude.csv | test macro-F1 clean / noisy | trained again without "
             "every flag / exclude.csv | recovered: every flag / exclude.csv |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def rule_cell(sub, rule, key):  # a rule's values over the seeds that have them ('-': none)
        got = [r["rules"][rule][key] for r in sub if rule in r.get("rules", {})]
        got = [g[2] if key == "prf" else g for g in got if g is not None]
        return spread(got) if got else "-"

    for name in dict.fromkeys(r["setting"] for r in rows):
        sub = [r for r in rows if r["setting"] == name]
        cell = lambda key, i=2: spread([r[key][i] for r in sub])  # noqa: E731
        both = [r["both"][2] for r in sub if "both" in r]  # rows of runs before the column: none
        lines.append(f"| {name} | {len(sub)} | {cell('ours')} | {cell('cleanlab')} | {cell('argmax')} | "
                     f"{sum(r['same_as_cleanlab'] for r in sub)}/{len(sub)} | {spread(both) if both else '-'} | "
                     f"{rule_cell(sub, 'neighbours', 'prf')} | "
                     f"{spread([r['clean_f1'] for r in sub])} / {spread([r['noisy_f1'] for r in sub])} | "
                     f"{rule_cell(sub, 'all', 'excluded_f1')} / {rule_cell(sub, 'neighbours', 'excluded_f1')} | "
                     f"{rule_cell(sub, 'all', 'recovered')} / {rule_cell(sub, 'neighbours', 'recovered')} |")
    grouped = [r for r in rows if "groups" in r]  # rows of runs before the column have none
    if grouped:
        lines += ["", "Where imgcls's flagged set falls, by the true class's group (training images: head >= 500, "
                  "medium 50-499, tail < 50): flagged images (of them injected flips) / clean images flagged of "
                  "the group's clean images with an out-of-fold probability.", "",
                  "| setting | seed | " + " | ".join(name for name, _, _ in GROUPS) + " |",
                  "|---|---:|" + "---:|" * len(GROUPS)]
        for r in grouped:
            cells = [f"{g['flagged']} ({g['flips_flagged']}) / {g['clean_flagged']} of {g['clean']}"
                     for g in (r["groups"][name] for name, _, _ in GROUPS)]
            lines.append(f"| {r['setting']} | {r['seed']} | " + " | ".join(cells) + " |")
    ruled = [r for r in rows if "rules" in r]
    if ruled:
        tail = GROUPS[-1][0]
        lines += ["", f"Exclusion rules (bench/audit.py `exclusion_rules`): the images each would drop, its F1 "
                  f"against the injected flips, the {tail} group's clean images it drops, and, where trained "
                  "again without them, the clean test macro-F1 and the share of the noise's cost recovered.", "",
                  "| setting | seed | rule | dropped | F1 vs flips | clean " + tail + " images dropped | "
                  "macro-F1 trained again | recovered |", "|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in ruled:
            for rule, v in r["rules"].items():
                g = v["groups"][tail]
                f1 = "-" if v["excluded_f1"] is None else f"{v['excluded_f1']:.4f}"
                rec = "-" if v["recovered"] is None else f"{v['recovered']:.3f}"
                dropped = (f"{v['flagged'] - v['relabelled']} (+{v['relabelled']} relabelled, {v['restored']} to "
                           "the true label)" if v.get("relabelled") else v["flagged"])
                lines.append(f"| {r['setting']} | {r['seed']} | {rule} | {dropped} | {v['prf'][2]:.3f} | "
                             f"{g['clean_flagged']} of {g['clean']} | {f1} | {rec} |")
        pooled = [(name, rule, pooled_recovery([r for r in ruled if r["setting"] == name], rule))
                  for name in dict.fromkeys(r["setting"] for r in ruled) for rule in RULES]
        for rule in RULES:  # across settings too, for a rule trained again on more than one
            across = pooled_recovery(ruled, rule)
            if across is not None and len(across["settings"]) > 1:
                pooled.append((" + ".join(across["settings"]), rule, across))
        lines += ["", "Recovered, pooled over the runs where the rule was trained again: the mean macro-F1 gained "
                  "over the mean the noise cost (each run's own share beside it); then the same with the steady "
                  f"score (macro-F1 over the classes with at least {STEADY} test images), where the rows have it.",
                  "", "| setting | rule | runs | mean cost | mean gain | recovered (pooled) | per run | steady: "
                  "runs | mean cost | mean gain | recovered (pooled) |",
                  "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        share = lambda got: "-" if got["share"] is None else f"{got['share']:.3f}"  # noqa: E731
        for name, rule, got in pooled:
            if got is not None:
                steady = pooled_recovery([r for r in ruled if r["setting"] in got["settings"]], rule, "steady")
                cells = ("- | - | - | -" if steady is None else
                         f"{steady['runs']} | {steady['cost']:.4f} | {steady['gain']:+.4f} | {share(steady)}")
                lines.append(f"| {name} | {rule} | {got['runs']} | {got['cost']:.4f} | {got['gain']:+.4f} | "
                             f"{share(got)} | {', '.join('-' if x is None else f'{x:.2f}' for x in got['per_run'])} | "
                             f"{cells} |")
    publish(lines, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "fashion-small"))
    p.add_argument("--label-col", default="subCategory")
    p.add_argument("--out", default=os.path.join(REPO, "..", "runs-audit"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.15])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--report", default=os.path.join(REPO, "bench", "results", "audit.md"))
    p.add_argument("--audit-flags", default="--device cpu", help="flags for audit.py")
    p.add_argument("--look", metavar="RUN", help="instead: pictures of an audited run (the top 30 label issues, "
                   "12 random near-duplicate groups) into --pictures, and its test scores without the leaked images")
    p.add_argument("--pictures", default=os.path.join(REPO, "docs"), help="folder for --look's pictures")
    p.add_argument("--retrain", nargs="*", default=["all"], choices=RULES, metavar="RULE",
                   help=f"which exclusion rules to train again without, of {', '.join(RULES)} (none: only the "
                   "flagged sets' scores; default: all, every flagged image)")
    p.add_argument("--same-steps", action="store_true", help="train again with as many draws per epoch as the "
                   "noisy run (--epoch-samples), so that an exclusion removes images but not optimiser steps; its "
                   "rows are named '<rule>, same steps'")
    p.add_argument("--jobs", type=int, default=1, help="seeds measured at once (each in its own OUT/s<seed>, "
                   "its log OUT/s<seed>/bench.log)")
    p.add_argument("--threads", type=int, default=None, help="threads of each training and audit (OMP_NUM_THREADS; "
                   "default: torch's own choice; with --jobs 2 on 2 cores, 1)")
    p.add_argument("--reuse-audit", action="store_true", help="take the runs' out-of-fold probabilities "
                   "from an audit already in them (one this checkout's audit.py made: not checked; one without "
                   "exclude.csv has no neighbours rule, and --retrain neighbours refuses it) instead of auditing "
                   "again")
    p.add_argument("train_flags", nargs="*", help="after --: flags for every train.py run (e.g. --epochs 1)")
    p.add_argument("--table-only", action="store_true", help="only write the table of the settings in --out's "
                   "rows.json (a bench stopped early)")
    p.add_argument("--rescore", action="store_true", help="fill the steady scores (macro-F1 over the classes "
                   f"with at least {STEADY} test images) of the rows in --out's rows.json measured before them, "
                   "from the runs in --out (needs --data; the rows of --seeds, --kinds and --rates, the "
                   "retrainings of the --retrain rules; resumes where a stopped one stopped), then write the table")
    args = p.parse_args(argv)
    if args.table_only:
        report(json.load(open(os.path.join(args.out, "rows.json"))),
               f"The rows in {os.path.join(args.out, 'rows.json')}, measured by an earlier `bench/audit.py` run "
               "(`--table-only`).", args.report)
        return 0
    if args.rescore:
        rows_path = os.path.join(args.out, "rows.json")
        rows = json.load(open(rows_path))
        settings = {f"{kind}-{rate:g}" for kind in args.kinds for rate in args.rates}
        rescore(args.out, rows, load_dataset(args.data, label_col=args.label_col, cache_dir="default",
                                             log=lambda *a: None), args.retrain,
                wanted=lambda r: r["seed"] in args.seeds and r["setting"] in settings,
                save=lambda rows: json.dump(rows, open(rows_path, "w"), indent=1))
        report(rows, f"The rows in {os.path.join(args.out, 'rows.json')}, measured by an earlier `bench/audit.py` "
               "run, their steady scores filled in (`--rescore`).", args.report)
        return 0
    from cleanlab.filter import find_label_issues  # the reference (a dev requirement)
    if args.look:
        look(args.look, args.pictures)
        publish(["# Test scores with and without the test images in duplicate groups across the split", "",
                 "    python bench/audit.py " + " ".join(argv if argv is not None else sys.argv[1:]), "",
                 *leak_effect(args.look)], args.report)
        return 0
    command = "    python bench/audit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    clean = load_dataset(args.data, label_col=args.label_col, cache_dir="default", log=lambda *a: None)
    paths, names = [os.path.abspath(q) for q in clean.paths], list(clean.class_names)
    labels, k, n = clean.labels.numpy(), len(names), len(clean.paths)
    manifest = os.path.join(out, "clean.csv")
    write_manifest(manifest, paths, [names[c] for c in labels])
    rows_path = os.path.join(out, "rows.json")
    previous = json.load(open(rows_path)) if os.path.exists(rows_path) else []
    rows = []
    lock = threading.Lock()  # rows, rows.json and the report are shared by the seeds running at once

    def measure(seed: int) -> None:
        base = os.path.join(out, f"s{seed}")
        os.makedirs(base, exist_ok=True)
        log = os.path.join(base, "bench.log")
        clean_run = train(manifest, os.path.join(base, "clean"), seed, args.train_flags, log, args.threads)
        split = json.load(open(os.path.join(clean_run, run.SPLIT)))
        test = np.asarray(split["test"], dtype=np.int64)
        confused_with = None
        if "confused" in args.kinds:  # the clean run's confusions choose the noisy labels
            clean_oof = audit(clean_run, args.audit_flags.split(), log, args.threads, args.reuse_audit)
            confused_with = most_confused(clean_oof["labels"], clean_oof["probs"], k)
        clean_test = test_scores(clean_run, clean.images, labels, test, names)
        candidates = np.setdiff1d(np.arange(n), test)
        for kind in args.kinds:
            for rate in args.rates:
                name = f"{kind}-{rate:g}"
                noisy, flipped = inject(labels, candidates, rate, kind, k, confused_with, seed)
                folder = os.path.join(base, name)
                noisy_csv = os.path.join(folder, "noisy.csv")
                write_manifest(noisy_csv, paths, [names[c] for c in noisy])
                os.makedirs(os.path.join(folder, "noisy", "v5"), exist_ok=True)
                shutil.copy(os.path.join(clean_run, run.SPLIT), os.path.join(folder, "noisy", "v5", run.SPLIT))
                noisy_run = train(noisy_csv, os.path.join(folder, "noisy"), seed, args.train_flags, log, args.threads)
                oof = audit(noisy_run, args.audit_flags.split(), log, args.threads, args.reuse_audit)
                positions, oof_labels, probs = oof["positions"], oof["labels"], oof["probs"]
                for rule, key, file in (("neighbours", "to_exclude", run.EXCLUDE),
                                        ("relabel", "relabel", run.RELABEL)):
                    if rule in args.retrain and key not in oof:
                        raise SystemExit(f"{noisy_run}: its audit has no {file} (older than the rule); "
                                         "audit again (leave out --reuse-audit)")
                truth = np.isin(positions, flipped)
                ours = confident.label_issues(oof_labels, probs)
                both = confident.label_issues(oof_labels, probs, filter_by="both")  # audit.py --filter-by both
                with lock:  # cleanlab shares module globals with its worker processes: one call at a time
                    reference = find_label_issues(oof_labels, probs)
                    same_both = bool((both == find_label_issues(oof_labels, probs, filter_by="both")).all())
                baseline = confident.argmax_disagrees(oof_labels, probs)
                counts = np.bincount(labels[candidates], minlength=k)
                noisy_test = test_scores(noisy_run, clean.images, labels, test, names)
                cost = clean_test["macro_f1"] - noisy_test["macro_f1"]
                rules = {rule: {"flagged": int(mask.sum()), "prf": prf(mask, truth), "mask": mask,
                                "groups": flags_by_group(mask, truth, labels[positions], counts),
                                "excluded_f1": None, "recovered": None}
                         for rule, mask in exclusion_rules(oof_labels, probs, ours, truth,
                                                           oof.get("to_exclude", np.zeros_like(truth)),
                                                           oof.get("votes")).items()}
                masks = {rule: v.pop("mask") for rule, v in rules.items()}
                moved = relabel_positions(paths, oof.get("relabel", {}))
                rules["relabel"].update(relabel_counts(moved, labels, names))
                row = {"seed": seed, "setting": name, "flips": int(truth.sum()),
                       "ours": prf(ours, truth), "cleanlab": prf(reference, truth),
                       "argmax": prf(baseline, truth), "same_as_cleanlab": bool((ours == reference).all()),
                       "both": prf(both, truth), "both_same_as_cleanlab": same_both,
                       "groups": rules["all"]["groups"], "rules": rules,
                       "clean_f1": clean_test["macro_f1"], "noisy_f1": noisy_test["macro_f1"],
                       "clean_steady": steady_f1(clean_test), "noisy_steady": steady_f1(noisy_test),
                       "excluded_f1": None, "recovered": None}
                with lock:
                    rows.append(row)
                steps = max(len(f["train"]) for f in split["folds"])  # draws per epoch of the noisy run
                for rule in [None, *args.retrain]:  # None: the flagged sets' scores first (a stopped run keeps them)
                    if rule is not None:  # train again without this rule's images, on the same test split
                        excluded = np.asarray(positions[masks[rule]], dtype=np.int64)
                        listing = os.path.join(noisy_run, run.AUDIT, run.LABEL_ISSUES)  # the user's path for "all"
                        extra = []
                        if rule == "relabel":  # the user's two files; the relabelled images stay in the split
                            listing = os.path.join(noisy_run, run.AUDIT, run.EXCLUDE)
                            extra = ["--relabel", os.path.join(noisy_run, run.AUDIT, run.RELABEL)]
                            excluded = np.setdiff1d(excluded, list(moved))
                        elif rule != "all":
                            listing = os.path.join(folder, f"exclude-{rule}.csv")
                            write_manifest(listing, [paths[i] for i in excluded], [names[noisy[i]] for i in excluded])
                        kept = [paths[i] for i in np.setdiff1d(np.arange(n), excluded)]
                        extra, key = ["--exclude", listing, *extra], rule
                        if args.same_steps:  # as many draws per epoch as the noisy run: fewer images, not fewer steps
                            extra, key = [*extra, "--epoch-samples", str(steps)], f"{rule}, same steps"
                            rules[key] = dict(rules[rule])
                        where = retrained_folder(folder, key)
                        os.makedirs(os.path.join(where, "v5"), exist_ok=True)
                        save_split(os.path.join(where, "v5", run.SPLIT), split_without(split, excluded, n), kept)
                        again = train(noisy_csv, where, seed, [*args.train_flags, *extra], log, args.threads)
                        scores = test_scores(again, clean.images, labels, test, names)
                        f1 = scores["macro_f1"]
                        gained = (f1 - row["noisy_f1"]) / cost if cost > 0 else None
                        rules[key].update(excluded_f1=f1, recovered=gained, excluded_steady=steady_f1(scores))
                        row.update(excluded_f1=rules["all"]["excluded_f1"], recovered=rules["all"]["recovered"])
                    with lock:
                        json.dump(merged(previous, rows), open(rows_path, "w"), indent=1)
                        report(merged(previous, rows), command, args.report)

    with ThreadPoolExecutor(args.jobs) as pool:  # seed by seed, --jobs at a time
        list(pool.map(measure, args.seeds))
    report(merged(previous, rows), command, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Audit a data set with the models a run trained: label errors, duplicates and leaks, outliers.

`audit.py --run RUN` (or `imgcls.load(RUN).audit()`) writes RUN/audit/:
- label_issues.csv: confident learning (confident.py) on out-of-fold probabilities. A cross-fitted run (v5)
  has one for every image outside the test split: each member predicts the third it did not train on. A
  holdout run has them for its validation images only (summary.json says which). Each issue also counts its
  look-alikes: how many of its NEIGHBOURS nearest images (the features below) carry its given label, and how
  many its suggested label.
- exclude.csv: the label issues that their look-alikes do not back (should_exclude), then the strays: images
  not flagged whose look-alikes carry another label where noise concentrates on that pair (should_add_stray);
  what train.py --exclude should drop.
- relabel.csv: those of exclude.csv whose suggested label both the members and the look-alikes back
  (should_relabel), with it as `label`: train.py --relabel trains them under it instead of dropping them.
- duplicates.csv: groups of exact copies (the same bytes) and of near-duplicates (cosine similarity of the
  first member's flip-invariant pooled features at or above --threshold), with the split of each image; a
  group with images on both sides of the test split leaks and makes the test score optimistic.
- outliers.csv: the images farthest from every class's mean feature direction.
- audit.html (galleries of each), summary.json (the counts) and out_of_fold.npz (the probabilities, their
  positions, labels and paths: what cleanlab and similar tools take).
Nothing is trained: two forward passes per member over its out-of-fold images (the image and its mirror
image, whose probabilities are averaged), and the first member's over every image (the same two).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import confident, duplicates
from .decoupling import extract_features, final_linear
from .inference import use_channels_last
from .fsio import atomic_write
from .run import (AUDIT, AUDIT_SUMMARY, DUPLICATES, EXCLUDE, LABEL_ISSUES, OUT_OF_FOLD, OUTLIERS, RELABEL, SPLIT,
                  Member, build_model, run_data)
from .data.splits import load_split

# Images per forward pass: Lite0 at 80x60 on 2 CPU cores extracts 549 img/s at 64 (channels_last) against
# 188 at 256 without (docs/audit.md)
BATCH = 64
THRESHOLD = 0.97  # cosine similarity of near-duplicates (docs/audit.md: how it was chosen, and its limits)
TOP_OUTLIERS = 100
# A label issue is kept out of exclude.csv when at least AGREEING of its NEIGHBOURS nearest images (outside the
# test split) carry its given label, and, where noise concentrates on its pair of labels, at least SHARE times as
# many as carry its suggested label: a flipped label is a stray among look-alikes of its true class, while a real
# image of a class the noisy members cannot recognise (a tail class swamped by flips) still sits among its own.
# The second test is for noise toward one confused class, where a stray's look-alikes carry its wrong label too,
# though far less often than the right one; it applies only where the confident joint estimates that more than
# PAIR_NOISE of the suggested class's images carry the given label, since elsewhere it mostly drops real images
# of classes that look like another (under uniform noise it nearly doubled the clean images dropped).
# Chosen on the noise benchmark's out-of-fold flags, not on a test split (docs/audit.md): k and AGREEING on
# uniform noise, SHARE among 0.25, 0.5, 0.75 and 1 by the mean F1 over uniform and confused noise, PAIR_NOISE
# among 0.01-0.08 by the mean F1 over every setting's flags (0.08, best at 15%, misses the pairs of 5% confused
# noise, whose estimated rates are about 0.05).
NEIGHBOURS, AGREEING, SHARE, PAIR_NOISE = 20, 2, 0.5, 0.03
# An image exclude.csv lists is relabelled rather than dropped when the members give its suggested label at least
# even odds (RELABEL_P) and at least half its look-alikes carry it (RELABEL_VOTES): two witnesses. Dropping a flip
# also takes an image from its true class; relabelling gives it back. Chosen on the noise benchmark's out-of-fold
# flags before any retraining (docs/audit.md): no candidate gave the most labels restored net of labels made wrong
# everywhere (the look-alike test alone did at 15%, a stricter 15 of 20 at 5%); both tests together came close to
# either and put fewer wrong labels into classes of 50-499 images. A small class is rarely the suggestion of half
# of 20 look-alikes, so its images are dropped, not moved. Measured since: training with relabel.csv recovered less
# than dropping under uniform noise and about the same under confused noise (docs/audit.md), so it is a list to
# look at, and --exclude alone stays the loop's default.
RELABEL_P, RELABEL_VOTES = 0.5, 10
# An image confident learning does not flag still goes into exclude.csv as a stray when at most STRAY_GIVEN of its
# NEIGHBOURS look-alikes carry its label, at least STRAY_OTHER carry one other label, and the confident joint
# estimates that more than PAIR_NOISE of that label's images carry its label. Why: where noise concentrates on a
# pair of classes the members learn it (15% of a class's images under its most confused class's label teach them
# that such images belong there too), so they give the wrong label a high probability and confident learning
# misses about 30% of the flips (confused 15% noise); their look-alikes still carry the true label. Chosen on the
# noise benchmark's out-of-fold flags, not on a test split (docs/audit.md).
STRAY_GIVEN, STRAY_OTHER = 4, 14


@dataclass
class Evidence:
    """What the models say about every image: out-of-fold probabilities (rows of NaN where there is none),
    flip-invariant features of the first member, and which images each side of the test split is."""
    probs: np.ndarray       # N x K float32
    covered: np.ndarray     # positions with an out-of-fold probability
    features: torch.Tensor  # N x D
    test: np.ndarray        # positions of the test split
    how: str                # where the out-of-fold probabilities come from, in words


def _feature_options(member: Member, device, batch_size: int) -> dict:
    pre = member.record.preprocessing
    return dict(img_size=pre.img_size, mean=pre.mean, std=pre.std, device=device, batch_size=batch_size,
                channels_last=use_channels_last("auto", device))


def flip_features(member: Member, images: torch.Tensor, device, batch_size: int = BATCH) -> torch.Tensor:
    """The member's pooled features of every image plus those of its mirror image (flip-invariant)."""
    model = build_model(member, device)
    kw = _feature_options(member, device, batch_size)
    everything = np.arange(len(images))
    return (extract_features(model, images, everything, **kw)
            + extract_features(model, images, everything, mirrored=True, **kw))


def leak_line(members: list[Member], threshold: float = THRESHOLD, device="cpu", log=print) -> str:
    """One line for the end of training: how many duplicate groups (exact or near, by the first member's
    features) hold both test images and images the members trained on."""
    dataset, _ = run_data(members, "all", log=lambda *a, **k: None)
    split = load_split(str(members[0].folder / SPLIT), dataset.paths)
    features = flip_features(members[0], dataset.images, torch.device(device))
    test = np.asarray(split["test"], dtype=np.int64)
    crossing = [g for g in duplicate_groups(features, test, dataset.paths, dataset.images, threshold)
                if g["crosses_test"]]
    if not crossing:
        return f"leak check: no duplicate group crosses the test split (cosine >= {threshold})"
    held = test_images_in(crossing, test)
    return (f"leak check: {len(crossing)} duplicate group(s) (exact, or cosine >= {threshold}) put {held} test "
            f"image(s) beside training images, so the test score is optimistic; audit.py --run "
            f"{members[0].folder.parent} lists them")


def part_of(members: list[Member], split: dict) -> list[np.ndarray]:
    """Each member's out-of-fold images: the validation part of the fold it trained."""
    return [np.asarray(split["folds"][m.record.fold]["val"], dtype=np.int64) for m in members]


def gather(members: list[Member], dataset, split: dict, device, batch_size: int = BATCH, log=print) -> Evidence:
    """Out-of-fold probabilities averaged over each image and its mirror image (as predict.py's hflip view:
    the members trained on random flips, and the mean of two views is steadier: on fashion-small's 15% noise it
    flags fewer clean images, docs/audit.md), and the first member's features of every image for the
    duplicate search."""
    n, k = len(dataset.paths), len(dataset.class_names)
    kw = _feature_options(members[0], device, batch_size)
    probs = np.full((n, k), np.nan, dtype=np.float32)
    everything = np.arange(n)
    features = None
    for i, (member, positions) in enumerate(zip(members, part_of(members, split))):
        model = build_model(member, device)
        head = final_linear(model).cpu()
        if i == 0:  # every image, and its mirror image: the features of the duplicate search
            log(f"audit: features of {n} images and their mirror images ({member.path})")
            own = extract_features(model, dataset.images, everything, **kw)
            mirror = extract_features(model, dataset.images, everything, mirrored=True, **kw)
            features = own + mirror
            picked = torch.as_tensor(positions)
            own, mirror = own[picked], mirror[picked]
        else:
            own = extract_features(model, dataset.images, positions, **kw)
            mirror = extract_features(model, dataset.images, positions, mirrored=True, **kw)
        log(f"audit: out-of-fold probabilities of {len(positions)} images and their mirror images ({member.path})")
        with torch.no_grad():
            probs[positions] = ((torch.softmax(head(own), dim=1) + torch.softmax(head(mirror), dim=1)) / 2).numpy()
    covered = np.flatnonzero(~np.isnan(probs[:, 0]))
    missing = n - len(split["test"]) - len(covered)  # the split keeps the images of tiny classes in training
    how = (f"out-of-fold: each of the {len(members)} cross-fitted members on the part it did not train on "
           f"({len(covered)} images: every image outside the test split"
           + (f" but {missing} of classes too small to hold any out, which every member trained on)"
              if missing else ")") if len(members) > 1 else
           f"the validation split only ({len(covered)} images): a holdout run has no out-of-fold probability "
           "for its training images (a cross-fitted run, v5, has one for every image outside the test split)")
    how += "; each the mean of the image's and its mirror image's"
    return Evidence(probs, covered, features, np.asarray(split["test"], dtype=np.int64), how)


# ---------------------------------------------------------------- the three findings, as tables

def neighbour_votes(features: torch.Tensor, labels: np.ndarray, queries, pool, asked: np.ndarray,
                    k: int = NEIGHBOURS) -> np.ndarray:
    """How many of each query image's k nearest images in the pool (cosine of the features, itself left out)
    carry each label asked for it (asked: len(queries) x L labels; returns the counts, the same shape)."""
    found, _ = duplicates.nearest(features, queries, pool, k)
    near = labels[found]  # len(queries) x k
    return (near[:, None, :] == np.asarray(asked)[:, :, None]).sum(2)


def pair_noise(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """K x K: the confident joint's estimate of the share of each true class's images (column) that carry each
    given label (row), p(given | true): cleanlab's noise matrix (estimate_latent) before its clipping."""
    joint = confident.confident_joint(labels, probs).astype(float)
    return joint / np.clip(joint.sum(0, keepdims=True), 1, None)


def should_exclude(given_votes, suggested_votes, pair_rate) -> np.ndarray:
    """The label issues their look-alikes do not back: fewer than AGREEING under the given label, or, where the
    estimated share of the suggested class's images under the given label (pair_rate) exceeds PAIR_NOISE, fewer
    than SHARE times as many as under the suggested one."""
    given_votes, suggested_votes = np.asarray(given_votes), np.asarray(suggested_votes)
    concentrated = np.asarray(pair_rate, dtype=float) > PAIR_NOISE
    return (given_votes < AGREEING) | (concentrated & (given_votes < SHARE * suggested_votes))


def look_alike_counts(labels: np.ndarray, found: np.ndarray, k: int) -> np.ndarray:
    """len(found) x k: how many of each image's look-alikes (found: their positions, one row per image) carry
    each of the k labels."""
    found = np.asarray(found, dtype=np.int64).reshape(len(found), -1)
    counts = np.zeros((len(found), k), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(found)), found.shape[1]), labels[found].ravel()), 1)
    return counts


def should_add_stray(given_votes, other_votes, pair_rate) -> np.ndarray:
    """Which images outside the label issues go into exclude.csv as strays: at most STRAY_GIVEN look-alikes
    under the given label, at least STRAY_OTHER under one other, where the estimated share of that label's
    images carrying the given one (pair_rate) exceeds PAIR_NOISE."""
    return ((np.asarray(given_votes) <= STRAY_GIVEN) & (np.asarray(other_votes) >= STRAY_OTHER)
            & (np.asarray(pair_rate, dtype=float) > PAIR_NOISE))


def should_relabel(p_suggested, suggested_votes) -> np.ndarray:
    """Which listed issues to train under their suggested label: p >= RELABEL_P and >= RELABEL_VOTES look-alikes
    under the suggested label."""
    return ((np.asarray(p_suggested, dtype=float) >= RELABEL_P)
            & (np.asarray(suggested_votes) >= RELABEL_VOTES))


def label_issue_rows(ev: Evidence, labels: np.ndarray, paths, class_names,
                     filter_by: str = "prune_by_noise_rate") -> list[dict]:
    sub_labels, sub_probs = labels[ev.covered], ev.probs[ev.covered]
    order = confident.ranked_issues(sub_labels, sub_probs, filter_by=filter_by)
    others = sub_probs.copy()
    others[np.arange(len(sub_labels)), sub_labels] = -1
    suggested = others.argmax(1)
    noise = pair_noise(sub_labels, sub_probs)
    pool = np.setdiff1d(np.arange(len(labels)), ev.test)  # every image with a label the members may use
    votes = neighbour_votes(ev.features, labels, ev.covered[order], pool,
                            np.stack([sub_labels[order], suggested[order]], 1))
    rows = []
    for rank, (i, (given_votes, suggested_votes)) in enumerate(zip(order, votes), 1):
        pos, other = int(ev.covered[i]), int(suggested[i])
        rows.append({"rank": rank, "path": paths[pos], "given": class_names[labels[pos]],
                     "suggested": class_names[other], "score": round(float(sub_probs[i, sub_labels[i]]), 6),
                     "p_suggested": round(float(sub_probs[i, other]), 6), "neighbours_given": int(given_votes),
                     "neighbours_suggested": int(suggested_votes),
                     "pair_noise": round(float(noise[sub_labels[i], other]), 6), "position": pos})
    return rows


def stray_rows(ev: Evidence, labels: np.ndarray, paths, class_names, flagged) -> list[dict]:
    """The strays (should_add_stray) among the images with an out-of-fold probability that are not label
    issues (flagged: their positions), as rows like label_issue_rows' (no rank; suggested: the look-alikes'
    most common other label), fewest look-alikes under the given label first."""
    queries = np.setdiff1d(ev.covered, np.asarray(flagged, dtype=np.int64))
    pool = np.setdiff1d(np.arange(len(labels)), ev.test)
    found, _ = duplicates.nearest(ev.features, queries, pool, NEIGHBOURS)
    return strays_among(queries, found, labels, ev.probs, pair_noise(labels[ev.covered], ev.probs[ev.covered]),
                        paths, class_names)


def strays_among(queries: np.ndarray, found: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                 noise: np.ndarray, paths, class_names) -> list[dict]:
    """stray_rows given each query image's look-alikes (found, one row each) and the noise matrix."""
    counts = look_alike_counts(labels, found, len(class_names))
    given = labels[queries]
    given_votes = counts[np.arange(len(queries)), given]
    counts[np.arange(len(queries)), given] = -1
    other, other_votes = counts.argmax(1), counts.max(1)
    picked = np.flatnonzero(should_add_stray(given_votes, other_votes, noise[given, other]))
    picked = picked[np.lexsort((queries[picked], -other_votes[picked], given_votes[picked]))]
    return [{"rank": "", "path": paths[queries[i]], "given": class_names[given[i]],
             "suggested": class_names[other[i]],
             "score": round(float(probs[queries[i], given[i]]), 6),
             "p_suggested": round(float(probs[queries[i], other[i]]), 6), "neighbours_given": int(given_votes[i]),
             "neighbours_suggested": int(other_votes[i]), "pair_noise": round(float(noise[given[i], other[i]]), 6),
             "position": int(queries[i])} for i in picked]


def content_hashes(paths, images: torch.Tensor) -> list[str]:
    """The file's bytes where there is a file, else (the built-in demo data) the decoded pixels'."""
    return [duplicates.file_hash(p) if Path(p).is_file() else hashlib.sha256(images[i].numpy().tobytes()).hexdigest()
            for i, p in enumerate(paths)]


def duplicate_groups(features: torch.Tensor, test: np.ndarray, paths, images, threshold: float) -> list[dict]:
    """Exact groups, then near-duplicate groups (those not already an exact group), each with whether it
    crosses the test split."""
    is_test = np.zeros(len(paths), dtype=bool)
    is_test[test] = True
    exact = duplicates.exact_groups(content_hashes(paths, images))
    i, j, _ = duplicates.similar_pairs(features, threshold)
    near = [g for g in duplicates.connected_groups(len(paths), i, j) if g not in exact]
    unit = duplicates.normalise(features)
    out = []
    for kind, groups in (("exact", exact), ("near", near)):
        for members in groups:
            sims = (unit[members] @ unit[members[0]]).tolist()
            out.append({"kind": kind, "members": members, "similarity": sims,
                        "crosses_test": bool(is_test[members].any() and not is_test[members].all())})
    return out


def test_images_in(groups: list[dict], test: np.ndarray) -> int:
    """How many test images the groups hold (an image in an exact and a near group counts once)."""
    return len({m for g in groups for m in g["members"]} & set(test.tolist()))


def split_names(n: int, split: dict, members: list[Member]) -> list[str]:
    """Each image's part: test, or (one member) train / val of its fold, or (cross-fitted) train."""
    names = np.full(n, "train", dtype=object)
    if len(members) == 1:
        names[np.asarray(split["folds"][members[0].record.fold]["val"], dtype=np.int64)] = "val"
    names[np.asarray(split["test"], dtype=np.int64)] = "test"
    return names.tolist()


def _csv(rows: list[dict], columns: list[str]) -> str:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def audit(members: list[Member], *, threshold: float = THRESHOLD, top_outliers: int = TOP_OUTLIERS,
          device="cpu", batch_size: int = BATCH, filter_by: str = "prune_by_noise_rate", log=print) -> Path:
    """Write RUN/audit/ for these members (a run's folds) and return the folder."""
    from .report import write_audit_page
    root = members[0].folder.parent  # the run folder (a holdout run too: its audit covers the run's images)
    dataset, _ = run_data(members, "all", log=log)
    split = load_split(str(members[0].folder / SPLIT), dataset.paths)
    device = torch.device(device)
    ev = gather(members, dataset, split, device, batch_size, log)
    labels, paths, names = dataset.labels.numpy(), dataset.paths, dataset.class_names
    parts = split_names(len(paths), split, members)

    issues = label_issue_rows(ev, labels, paths, names, filter_by)
    groups = duplicate_groups(ev.features, ev.test, paths, dataset.images, threshold)
    dup_rows = [{"group": g, "kind": d["kind"], "path": paths[m], "split": parts[m], "label": names[labels[m]],
                 "similarity": round(s, 6), "crosses_test": d["crosses_test"]}
                for g, d in enumerate(groups, 1) for m, s in zip(d["members"], d["similarity"])]
    known = np.setdiff1d(np.arange(len(paths)), ev.test)
    scores = duplicates.outlier_scores(ev.features, labels, known)
    far = np.argsort(-scores, kind="stable")[:top_outliers]
    out_rows = [{"rank": r, "path": paths[i], "label": names[labels[i]], "split": parts[i],
                 "score": round(float(scores[i]), 6)} for r, i in enumerate(far, 1)]

    folder = root / AUDIT
    folder.mkdir(parents=True, exist_ok=True)
    issue_columns = ["rank", "path", "given", "suggested", "score", "p_suggested", "neighbours_given",
                     "neighbours_suggested", "pair_noise"]
    atomic_write(folder / LABEL_ISSUES, _csv(issues, issue_columns))
    dropped = should_exclude(*([r[c] for r in issues] for c in ("neighbours_given", "neighbours_suggested",
                                                                   "pair_noise")))
    strays = stray_rows(ev, labels, paths, names, [r["position"] for r in issues])
    to_exclude = ([dict(r, found_by="label issue") for r, drop in zip(issues, dropped) if drop]
                  + [dict(r, found_by="stray") for r in strays])
    atomic_write(folder / EXCLUDE, _csv(to_exclude, [*issue_columns, "found_by"]))
    moved = should_relabel(*([r[c] for r in to_exclude] for c in ("p_suggested", "neighbours_suggested")))
    to_relabel = [dict(r, label=r["suggested"]) for r, move in zip(to_exclude, moved) if move]
    atomic_write(folder / RELABEL, _csv(to_relabel, ["path", "label", "given", "p_suggested",
                                                     "neighbours_suggested"]))
    atomic_write(folder / DUPLICATES, _csv(dup_rows, ["group", "kind", "path", "split", "label", "similarity",
                                                      "crosses_test"]))
    atomic_write(folder / OUTLIERS, _csv(out_rows, ["rank", "path", "label", "split", "score"]))
    # the out-of-fold probabilities themselves, for other tools (cleanlab's find_label_issues takes them as is)
    atomic_write(folder / OUT_OF_FOLD, lambda fh: np.savez(fh, probs=ev.probs[ev.covered], positions=ev.covered,
                                                           labels=labels[ev.covered], paths=np.array(paths)[ev.covered]))
    crossing = [d for d in groups if d["crosses_test"]]
    summary = {"images": len(paths), "label_issues": len(issues), "out_of_fold": ev.how,
               "to_exclude": len(to_exclude), "strays": len(strays),
               "to_exclude_rule": f"the label issues with fewer than {AGREEING} of their {NEIGHBOURS} nearest "
                                  f"images (outside the test split) under the given label, or, where more than "
                                  f"{PAIR_NOISE} of the suggested class's images are estimated to carry the "
                                  f"given label, fewer than {SHARE} times as many as under the suggested label; "
                                  f"and the strays: images not flagged with at most {STRAY_GIVEN} of their "
                                  f"{NEIGHBOURS} nearest images under their label and at least {STRAY_OTHER} "
                                  f"under one other, where more than {PAIR_NOISE} of that label's images are "
                                  "estimated to carry theirs",
               "to_relabel": len(to_relabel),
               "to_relabel_rule": f"the images in {EXCLUDE} whose suggested label has p >= {RELABEL_P} and at "
                                  f"least {RELABEL_VOTES} of their {NEIGHBOURS} nearest images under it",
               "duplicate_groups": {"exact": sum(d["kind"] == "exact" for d in groups),
                                    "near": sum(d["kind"] == "near" for d in groups)},
               "groups_crossing_test": len(crossing),
               "test_images_in_crossing_groups": test_images_in(crossing, ev.test),
               "threshold": threshold, "outliers_listed": len(out_rows)}
    atomic_write(folder / AUDIT_SUMMARY, json.dumps(summary, indent=2) + "\n")
    write_audit_page(folder, title=f"audit of {root}", summary=summary, images=dataset.images, issues=issues,
                     groups=groups, outliers=[(int(i), float(scores[i])) for i in far], paths=paths,
                     labels=[names[c] for c in labels], parts=parts, strays=strays)
    log(f"audit: {len(issues)} label issue(s) ({len(to_exclude) - len(strays)} that their look-alikes do not "
        f"back, and {len(strays)} stray(s) among the rest: {EXCLUDE}, for train.py --exclude; "
        f"{len(to_relabel)} of them with a suggested label backed twice: "
        f"{RELABEL}, for --relabel), {len(groups)} duplicate group(s) ({len(crossing)} across the "
        f"test split), {len(out_rows)} outliers listed: {folder}")
    return folder

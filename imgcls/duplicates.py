"""Exact and near-duplicate images, and images far from every class, from a trained model's pooled features.

Exact duplicates: the same bytes (SHA-256 of the file). Near-duplicates: cosine similarity of the features
at or above a threshold, searched in blocks of rows so that memory stays bounded whatever the data set's size
(a block of B rows against N features costs B x N floats; the full N x N matrix for 35k images would be
4.9 GB). Groups are the connected components of the similar pairs. The features are made flip-invariant by
summing those of the image and of its mirror image, so a mirrored copy has exactly its original's features.
Outliers: images whose features are far from every class's mean direction. Nearest images: the k most
similar to each of some images, searched in the same blocks.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

BLOCK_BYTES = 256 * 2**20  # memory for one block of similarities (float32)


def file_hash(path: str, chunk: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def exact_groups(hashes: list[str]) -> list[list[int]]:
    """Groups (of two or more indices) of identical hashes, in order of first appearance."""
    seen: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        seen.setdefault(h, []).append(i)
    return [g for g in seen.values() if len(g) > 1]


def normalise(features: torch.Tensor) -> torch.Tensor:
    features = features.float()
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def similar_pairs(features: torch.Tensor, threshold: float, block_bytes: int = BLOCK_BYTES):
    """(i, j, cosine) for every pair i < j with cosine >= threshold, as three numpy arrays. Rows are compared
    in blocks against the rows from the block's start on (the upper triangle), so each pair is found once."""
    unit = normalise(features)
    n = len(unit)
    rows = max(1, min(n, block_bytes // max(1, 4 * n)))
    found_i, found_j, found_s = [], [], []
    for start in range(0, n, rows):
        sims = unit[start:start + rows] @ unit[start:].T  # rows x (n - start)
        # only j > i: column c of the block is row start + c, so the block's upper triangle
        hit = (sims >= threshold) & torch.ones_like(sims, dtype=torch.bool).triu_(diagonal=1)
        i, j = torch.nonzero(hit, as_tuple=True)
        found_i.append((i + start).numpy())
        found_j.append((j + start).numpy())
        found_s.append(sims[i, j].numpy())
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


def nearest(features: torch.Tensor, queries, pool, k: int, block_bytes: int = BLOCK_BYTES):
    """The k rows of `pool` (indices into features) most cosine-similar to each query row, the query itself
    left out, most similar first: (indices, similarities), each len(queries) x k. Queries are compared with
    the whole pool in blocks, so memory stays bounded as in similar_pairs."""
    unit = normalise(features)
    pool = torch.as_tensor(np.asarray(pool, dtype=np.int64))
    queries = np.asarray(queries, dtype=np.int64)
    k = min(k, len(pool) - 1)  # a query in the pool cannot be its own neighbour
    column = torch.full((len(unit),), -1, dtype=torch.long)  # where each image sits in the pool, -1: not in it
    column[pool] = torch.arange(len(pool))
    candidates = unit[pool]
    rows = max(1, block_bytes // max(1, 4 * len(pool)))
    found_i, found_s = [], []
    for start in range(0, len(queries), rows):
        q = torch.as_tensor(queries[start:start + rows])
        sims = unit[q] @ candidates.T
        own = column[q]
        inside = torch.nonzero(own >= 0).squeeze(1)
        sims[inside, own[inside]] = -float("inf")
        s, j = sims.topk(k, dim=1)
        found_i.append(pool[j].numpy())
        found_s.append(s.numpy())
    if not found_i:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(found_i), np.concatenate(found_s)


def connected_groups(n: int, pairs_i, pairs_j) -> list[list[int]]:
    """Connected components (of two or more) of the graph with the given edges, each sorted, ordered by their
    smallest index (union-find with path halving)."""
    parent = list(range(n))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(pairs_i.tolist(), pairs_j.tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in range(n):
        groups.setdefault(root(x), []).append(x)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def outlier_scores(features: torch.Tensor, labels: np.ndarray, known: np.ndarray) -> np.ndarray:
    """1 - the largest cosine similarity between an image's features and a class's mean direction (the
    normalised mean of the normalised features of the `known` images labelled with it): 0 on a class's own
    direction, up to 2 when opposite to every class. Classes without a known image are left out."""
    unit = normalise(features)
    labels = np.asarray(labels)
    known = np.asarray(known, dtype=np.int64)
    classes = np.unique(labels[known])
    means = torch.stack([unit[torch.as_tensor(known[labels[known] == c])].mean(0) for c in classes])
    return (1.0 - (unit @ normalise(means).T).max(1).values).numpy()

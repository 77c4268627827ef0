"""Near-duplicates: pairs of cached images that are the same photo (resized, re-encoded,
cropped, flipped), grouped, within a split and across splits (a leak of test into train).

A pair's score is CSLS (Conneau et al., 2018), a cosine corrected for how crowded each image's
neighbourhood is: 2 cos(a, b) - r(a) - r(b), r the mean cosine of an image's LOCAL_K nearest
neighbours. Plain cosine cannot tell a cropped copy (cosine down to 0.7 in the space of
features/audit/space.py) from two distinct photos of a dense class (many above 0.8); relative to
their neighbourhoods, copies stand out. THRESHOLD was chosen on flowers5 with planted copies
(seed 0) and checked on another planting (seed 1): BENCHMARKS.md, "Audit".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.cache.split import SPLIT_NAMES

THRESHOLD = 0.2    # CSLS score at and above which two images are called near-duplicates
LOCAL_K = 5        # neighbours that define an image's neighbourhood (r)
CANDIDATES = 10    # nearest neighbours of each image that are scored as pairs


@dataclass
class Pairs:
    """Near-duplicate pairs (a < b), their CSLS scores and cosines."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    cosine: np.ndarray


@dataclass
class DuplicateGroup:
    """Images linked by near-duplicate pairs; `keep` is the member an exclude list keeps (the
    first in the earliest split: train before val before test)."""

    rows: list[int]
    keep: int
    score: float           # the best pair's score in the group
    cosine: float          # that pair's cosine
    cross_split: bool      # members in more than one split: test or val images seen in training
    mixed_labels: bool     # members under more than one class: at least one label is wrong


def local_scale(graph, k: int = LOCAL_K) -> np.ndarray:
    """r: each row's mean cosine to its k nearest neighbours."""
    return graph.sims[:, :k].mean(axis=1)


def scored_pairs(graph, threshold: float = THRESHOLD) -> Pairs:
    """The pairs among each row's CANDIDATES nearest neighbours scoring at least `threshold`."""
    r = local_scale(graph)
    k = min(CANDIDATES, graph.rows.shape[1])
    a = np.repeat(np.arange(len(graph.rows)), k)
    b, cos = graph.rows[:, :k].ravel(), graph.sims[:, :k].ravel()
    valid = b >= 0
    a, b, cos = a[valid], b[valid], cos[valid]
    score = 2 * cos - r[a] - r[b]
    keep = score >= threshold
    a, b, cos, score = a[keep], b[keep], cos[keep], score[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(lo * len(graph.rows) + hi, return_index=True)
    order = first[np.argsort(-score[first], kind="stable")]
    return Pairs(lo[order], hi[order], score[order].astype(float), cos[order].astype(float))


def group_ids(n: int, pairs: Pairs) -> np.ndarray:
    """A group number per row: rows linked by pairs share one, every other row is alone."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    links = coo_matrix((np.ones(len(pairs.a)), (pairs.a, pairs.b)), shape=(n, n))
    return connected_components(links, directed=False)[1]


def duplicate_groups(pairs: Pairs, groups: np.ndarray, split, labels) -> list[DuplicateGroup]:
    """The groups of two or more rows, best-scoring first."""
    split, labels = np.asarray(split), np.asarray(labels)
    best: dict[int, int] = {}
    for i in range(len(pairs.a)):   # pairs are sorted by score: the first seen is the best
        best.setdefault(int(groups[pairs.a[i]]), i)
    out = []
    for gid, i in best.items():
        rows = sorted(int(r) for r in np.flatnonzero(groups == gid))
        keep = min(rows, key=lambda r: (int(split[r]), r))
        out.append(DuplicateGroup(rows, keep, float(pairs.score[i]), float(pairs.cosine[i]),
                                  len(set(split[rows].tolist())) > 1,
                                  len(set(labels[rows].tolist())) > 1))
    return sorted(out, key=lambda g: -g.score)


def leaked_rows(groups: list[DuplicateGroup], split) -> list[int]:
    """Val and test rows with a near-duplicate in another split: what inflates the test score."""
    split = np.asarray(split)
    out = []
    for group in groups:
        codes = set(split[group.rows].tolist())
        if len(codes) > 1:
            lowest = min(codes)
            out += [r for r in group.rows if split[r] != lowest]
    return sorted(out)


def split_name(code) -> str:
    return SPLIT_NAMES[int(code)] if 0 <= int(code) < len(SPLIT_NAMES) else str(code)

"""Outliers (images unlike the images around them: a screenshot, a blank frame, a stray photo)
and class balance.

The outlier score is the local outlier factor (scikit-learn's LocalOutlierFactor, OUTLIER_K
neighbours) on the power-normalised features (features/audit/space.py's signed square root,
without centring or unit length: an image with little activation, such as a blank frame, is odd
by its magnitude, which cosine ignores), the neighbour graph taken from an exact faiss search.
1 is an ordinary image; images above median + SPREAD x MAD of all scores are flagged, the
ranking is kept. Measured on planted odd images (BENCHMARKS.md, "Audit").
"""

from __future__ import annotations

import numpy as np

OUTLIER_K = 20
SPREAD = 6.0     # robust z above which an image is flagged (MAD scaled to a standard deviation)


def outlier_scores(X) -> np.ndarray:
    """The local outlier factor of every row of raw features X (n, d)."""
    from scipy.sparse import csr_matrix
    from sklearn.neighbors import LocalOutlierFactor

    from features.audit.index import faiss
    from features.audit.space import power

    F = np.ascontiguousarray(power(X), np.float32)
    n = len(F)
    k = max(1, min(OUTLIER_K, n - 2))
    index = faiss().IndexFlatL2(F.shape[1])
    index.add(F)
    squared, rows = index.search(F, k + 1)   # each row's k nearest and itself (sklearn's form)
    dist = np.sqrt(np.maximum(squared, 0)).ravel()
    graph = csr_matrix((dist, rows.ravel(), np.arange(0, n * (k + 1) + 1, k + 1)), shape=(n, n))
    lof = LocalOutlierFactor(n_neighbors=k, metric="precomputed").fit(graph)
    return -lof.negative_outlier_factor_


def flagged(scores) -> tuple[np.ndarray, float]:
    """(rows flagged as outliers, worst first; the score threshold used)."""
    scores = np.asarray(scores, dtype=float)
    median = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - median))) or 1e-12
    threshold = median + SPREAD * mad
    rows = np.flatnonzero(scores > threshold)
    return rows[np.argsort(-scores[rows], kind="stable")], threshold


def class_balance(labels, split, class_names) -> dict:
    """Images per class, overall and per split, and the largest / smallest class ratio."""
    from features.cache.split import SPLIT_NAMES

    labels, split = np.asarray(labels), np.asarray(split)
    k = len(class_names)
    counts = np.bincount(labels, minlength=k)
    per_split = {name: dict(zip(class_names, np.bincount(labels[split == code],
                                                         minlength=k).tolist()))
                 for code, name in enumerate(SPLIT_NAMES)}
    present = counts[counts > 0]
    return {"counts": dict(zip(class_names, counts.tolist())), "per_split": per_split,
            "imbalance": float(present.max() / present.min()) if len(present) else 0.0}

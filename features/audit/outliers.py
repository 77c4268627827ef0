"""Outliers (images far from every other image: a screenshot, a blank frame, a stray photo)
and class balance.

An image's outlier score is 1 minus its mean cosine to its OUTLIER_K nearest images outside its
own near-duplicate group (two copies of a blank frame keep each other company, not the data).
Images scoring above median + SPREAD x MAD of all scores are flagged; the ranking is kept.
"""

from __future__ import annotations

import numpy as np

OUTLIER_K = 5
SPREAD = 6.0     # robust z above which an image is flagged (MAD scaled to a standard deviation)


def outlier_scores(graph, groups) -> np.ndarray:
    """1 - mean cosine to the OUTLIER_K nearest neighbours not in the row's own group."""
    groups = np.asarray(groups)
    rows, sims = graph.rows, graph.sims
    foreign = (rows >= 0) & (groups[np.maximum(rows, 0)] != groups[:, None])
    ranks = np.cumsum(foreign, axis=1)
    use = foreign & (ranks <= OUTLIER_K)
    count = np.maximum(use.sum(axis=1), 1)
    return 1.0 - (np.where(use, sims, 0.0).sum(axis=1) / count)


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
    from features.split import SPLIT_NAMES

    labels, split = np.asarray(labels), np.asarray(split)
    k = len(class_names)
    counts = np.bincount(labels, minlength=k)
    per_split = {name: dict(zip(class_names, np.bincount(labels[split == code],
                                                         minlength=k).tolist()))
                 for code, name in enumerate(SPLIT_NAMES)}
    present = counts[counts > 0]
    return {"counts": dict(zip(class_names, counts.tolist())), "per_split": per_split,
            "imbalance": float(present.max() / present.min()) if len(present) else 0.0}

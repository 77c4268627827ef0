"""A quick cross-validated linear probe: how linearly separable a layer's features are.

StandardScaler + LogisticRegression over a small C grid, scored by seeded StratifiedKFold on the
rows it is given (the cache's TRAIN split: the val and test images stay unseen). The reported
score is the best grid point's mean, so it is slightly optimistic; it is meant to rank layers
against each other, not as a final test figure (fit a head and score it on the test split for
that).
"""

from __future__ import annotations

import warnings

import numpy as np

from features.errors import UserError

C_GRID = (0.01, 0.1, 1.0, 10.0)


def probe_folds(labels, folds: int) -> int:
    counts = np.bincount(np.asarray(labels))
    counts = counts[counts > 0]
    if len(counts) < 2:
        raise UserError("the train split holds a single class; the probe needs at least two "
                        "class folders")
    k = int(min(folds, counts.min()))
    if k < 2:
        raise UserError(f"a class has only {counts.min()} training image(s); the probe's "
                        "cross-validation needs at least 2 per class: add images, or lower "
                        "--test-size/--val-size")
    return k


def cv_probe(features, labels, *, folds: int = 5, seed: int = 0, c_grid=C_GRID) -> dict:
    """{cv_mean, cv_std, C, folds, scores} of the best C for a linear probe on (features, labels)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    k = probe_folds(labels, folds)
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    best = None
    for c in c_grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)  # constant columns of random nets
            scores = cross_val_score(model, features, labels, cv=cv, n_jobs=1)
        if best is None or scores.mean() > best["cv_mean"] + 1e-12:
            best = {"cv_mean": float(scores.mean()), "cv_std": float(scores.std()),
                    "C": float(c), "folds": k, "scores": [float(s) for s in scores]}
    return best


def probe_rows(labels, mask, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted row indices of `mask`, stratified-subsampled to `max_rows` when it holds more."""
    rows = np.flatnonzero(mask)
    if max_rows and len(rows) > max_rows:
        from sklearn.model_selection import train_test_split

        rows, _ = train_test_split(rows, train_size=max_rows, stratify=np.asarray(labels)[rows],
                                   random_state=seed)
    return np.sort(rows)

"""Likely label errors by confident learning (cleanlab) on out-of-fold probabilities.

The probabilities come from our own cross-validation (features/heads/search.py, one pass over the
folds): a logistic head on the power-normalised features (features/audit/space.py; 0.85 of
planted swaps in the top 2n against 0.83 on raw features), C chosen on the same folds, every
image scored by the model of the fold that did not see it. Folds keep each near-duplicate group together, so no image is scored
by a model that trained on its copy (which would vouch for a copied wrong label). Every split
takes part: a wrong label in test costs as much as one in train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.errors import UserError


@dataclass
class LabelIssues:
    """Per image: the out-of-fold probabilities, cleanlab's label quality (self-confidence:
    the probability of the given label; low = likely wrong), whether cleanlab flags it (its
    estimate of how many labels are wrong, `prune_by_noise_rate`), and the ranking by quality
    (most likely wrong first). Ranking by quality alone put more planted swaps in its top 2n
    than flagged-first (0.83 against 0.78 on flowers5, BENCHMARKS.md)."""

    proba: np.ndarray
    quality: np.ndarray
    flagged: np.ndarray
    ranked: np.ndarray
    cv_accuracy: float
    folds: int


def out_of_fold_proba(X, y, groups, *, folds: int = 5, seed: int = 0, n_jobs: int = -1):
    """(probabilities (n, k) of the model that did not see each row, CV accuracy, folds)."""
    from features.heads.estimators import as_logits, smallest_class, softmax, stratified_folds
    from features.heads.kinds import make_pipeline, param_grid
    from features.heads.search import FoldSet, search

    y = np.asarray(y)
    folds = min(int(folds), smallest_class(y, groups))
    if folds < 2:
        raise UserError("label errors need at least 2 images (or near-duplicate groups) in every "
                        "class for cross-validation: add images")
    fold_set = FoldSet(X, y, groups, stratified_folds(folds, seed, groups), n_jobs=n_jobs)
    found = search(make_pipeline("logistic", seed=seed), param_grid("logistic"), fold_set)
    proba = softmax(as_logits(found.held_out))
    return proba, float(np.mean(found.cv_scores)), folds


def find_label_issues(X, y, groups, *, folds: int = 5, seed: int = 0,
                      n_jobs: int = -1) -> LabelIssues:
    """Confident learning over every cached image (see the module docstring)."""
    try:
        from cleanlab.filter import find_label_issues as cleanlab_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise UserError("audit needs cleanlab: pip install 'bottleneck-transfer[audit]' (or pip "
                        "install cleanlab)") from None
    from features.audit.space import power

    y = np.asarray(y)
    proba, accuracy, used = out_of_fold_proba(power(X), y, groups, folds=folds, seed=seed,
                                              n_jobs=n_jobs)
    quality = get_label_quality_scores(y, proba, method="self_confidence")
    flagged = cleanlab_issues(y, proba, filter_by="prune_by_noise_rate", n_jobs=1)
    ranked = np.argsort(quality, kind="stable")
    return LabelIssues(proba, quality, flagged, ranked, accuracy, used)

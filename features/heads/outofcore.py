"""The out-of-core route: a linear head trained by SGD `partial_fit` over blocks of HDF5 rows.

For caches too large to hold in memory (e.g. VGG16 block5_pool with --pool none: 25,088-d per
image). One pass computes the scaling statistics (StandardScaler.partial_fit); then every
(alpha, CV fold) candidate is trained in the same passes over the train split, each skipping its
held-out fold; one more pass scores the folds. The chosen alpha is refitted on train(+val), and the
temperature of its probabilities is fitted on the held-out CV decision values. The test split is
never read here.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from features.heads.estimators import TemperedSGD, fit_temperature
from features.heads.kinds import cv_splitter

ALPHAS = (1e-4, 1e-3, 1e-2)


def memory_estimate_mb(n_rows: int, dim: int) -> float:
    """Rough peak memory of the in-memory route: float32 features, a float64 scaled copy and
    fold copies in CV."""
    return n_rows * dim * 4 * 4 / 2**20


def default_memory_budget_mb() -> float:
    """A quarter of the machine's physical memory (2 GiB when it cannot be read)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2**20
    except (ValueError, OSError, AttributeError):
        return 2048.0


def block_rows_for(dim: int, block_mb: float = 32.0) -> int:
    return int(max(16, min(65536, block_mb * 2**20 // (4 * max(1, dim)))))


class _Stream:
    """The rows of one out-of-core fit, read block by block from the cache and scaled."""

    def __init__(self, cache, layers, block: int, seed: int, class_weight):
        self.cache, self.layers, self.block = cache, layers, block
        self.labels = np.asarray(cache.labels)
        self.classes = np.arange(len(cache.class_names))
        self.rng = np.random.default_rng(seed)
        self.class_weight = class_weight
        self.scaler = StandardScaler()

    def fit_scaler(self, rows) -> None:
        for _, X in self.cache.iter_chunks(self.layers, rows, self.block):
            self.scaler.partial_fit(X)

    def shuffled(self, rows):
        """(row indices, scaled features, labels) a block at a time, blocks and rows shuffled."""
        for idx, X in self.cache.iter_chunks(self.layers, rows, self.block, self.rng):
            order = self.rng.permutation(len(idx))
            yield idx[order], self.scaler.transform(X[order]), self.labels[idx[order]]

    def in_order(self, rows):
        for idx, X in self.cache.iter_chunks(self.layers, rows, self.block):
            yield idx, self.scaler.transform(X), self.labels[idx]

    def weights(self, y, reference):
        """class_weight='balanced' as sample weights (partial_fit does not take it), counted
        over `reference` rows; None otherwise."""
        if self.class_weight != "balanced":
            return None
        counts = np.bincount(self.labels[reference], minlength=len(self.classes)).astype(float)
        return (len(reference) / (len(self.classes) * np.maximum(counts, 1)))[y]


def fit_sgd_outofcore(cache, layers, train_rows, val_rows=(), *, alphas=ALPHAS, folds=5, epochs=5,
                      seed=0, class_weight=None, refit_on="train+val", block_mb=32.0, say=None):
    """(fitted Pipeline([scale, TemperedSGD]), info) without holding the features in memory."""
    started = time.time()
    say = say or (lambda *a: None)
    train_rows = np.sort(np.asarray(train_rows))
    val_rows = np.sort(np.asarray(val_rows, dtype=int))
    fit_rows = np.sort(np.concatenate([train_rows, val_rows])) if (
        refit_on == "train+val" and len(val_rows)) else train_rows
    stream = _Stream(cache, layers, block_rows_for(cache.feature_dim(layers), block_mb), seed,
                     class_weight)
    stream.fit_scaler(fit_rows)
    fold_of = _fold_of_rows(stream.labels, train_rows, folds, seed)
    models = _train_fold_models(stream, train_rows, fold_of, alphas, epochs, seed, say)
    candidates, held = _score_folds(stream, train_rows, fold_of, models, alphas)
    best = max(candidates, key=lambda c: (c["cv_mean"], -c["params"]["clf__alpha"]))
    alpha = best["params"]["clf__alpha"]
    decisions, held_y = (np.concatenate(part) for part in zip(*held[alpha]))
    temperature = fit_temperature(decisions, np.searchsorted(stream.classes, held_y))
    final = _sgd(alpha, seed)
    for _ in range(epochs):
        for _, X, y in stream.shuffled(fit_rows):
            final.partial_fit(X, y, classes=stream.classes,
                              sample_weight=stream.weights(y, fit_rows))
    head = TemperedSGD(alpha=alpha, loss="hinge", class_weight=class_weight, random_state=seed)
    pipeline = Pipeline([("scale", stream.scaler), ("clf", head.adopt(final, temperature))])
    info = {"kind": "sgd", "route": "out-of-core", "scaling": "standard", "pca": None,
            "class_weight": class_weight, "folds": int(fold_of.max()) + 1,
            "grid": {"clf__alpha": list(alphas)}, "best_params": {"clf__alpha": alpha},
            "cv_scores": best["scores"], "cv_mean": best["cv_mean"], "cv_std": best["cv_std"],
            "candidates": [{k: v for k, v in c.items() if k != "scores"} for c in candidates],
            "refit_on": "train+val" if len(fit_rows) > len(train_rows) else "train",
            "epochs": epochs, "block_rows": stream.block, "temperature": temperature,
            "fit_seconds": round(time.time() - started, 2)}
    return pipeline, info


def _sgd(alpha: float, seed: int):
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="hinge", alpha=alpha, average=True, random_state=seed)


def _fold_of_rows(labels, train_rows, folds: int, seed: int) -> np.ndarray:
    """The stratified CV fold of each train row (in train_rows order)."""
    y_train = labels[train_rows]
    cv = cv_splitter(y_train, folds, seed)
    fold_of = np.empty(len(train_rows), dtype=int)
    for f, (_, held) in enumerate(cv.split(np.zeros(len(y_train)), y_train)):
        fold_of[held] = f
    return fold_of


def _train_fold_models(stream, train_rows, fold_of, alphas, epochs, seed, say) -> dict:
    """{(alpha, fold): SGD} all trained in the same passes, each skipping its held-out fold."""
    fold_by_row = dict(zip(train_rows.tolist(), fold_of.tolist()))
    n_folds = int(fold_of.max()) + 1
    models = {(a, f): _sgd(a, seed) for a in alphas for f in range(n_folds)}
    for epoch in range(epochs):
        for idx, X, y in stream.shuffled(train_rows):
            w = stream.weights(y, train_rows)
            f_idx = np.array([fold_by_row[i] for i in idx])
            for (a, f), model in models.items():
                keep = f_idx != f
                if keep.any():
                    model.partial_fit(X[keep], y[keep], classes=stream.classes,
                                      sample_weight=None if w is None else w[keep])
        say(f"  out-of-core SGD: epoch {epoch + 1}/{epochs} over {len(train_rows)} train rows "
            f"({n_folds} folds x {len(alphas)} alphas)")
    return models


def _score_folds(stream, train_rows, fold_of, models, alphas):
    """(candidates with per-fold accuracy, {alpha: [(held-out decisions, labels)]})."""
    fold_by_row = dict(zip(train_rows.tolist(), fold_of.tolist()))
    n_folds = int(fold_of.max()) + 1
    correct = {key: 0 for key in models}
    held_out = {a: [] for a in alphas}
    for idx, X, y in stream.in_order(train_rows):
        f_idx = np.array([fold_by_row[i] for i in idx])
        for (a, f), model in models.items():
            held = f_idx == f
            if held.any():
                dec = model.decision_function(X[held])
                logits = dec if dec.ndim == 2 else np.stack([-dec, dec], 1)
                correct[(a, f)] += int(np.sum(stream.classes[np.argmax(logits, 1)] == y[held]))
                held_out[a].append((dec, y[held]))
    total = np.bincount(fold_of, minlength=n_folds)
    candidates = []
    for a in alphas:
        scores = [correct[(a, f)] / max(1, total[f]) for f in range(n_folds)]
        candidates.append({"params": {"clf__alpha": a}, "cv_mean": float(np.mean(scores)),
                           "cv_std": float(np.std(scores)), "scores": scores})
    return candidates, held_out

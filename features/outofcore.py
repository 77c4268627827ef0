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

from features.heads import TemperedSGD, cv_splitter, fit_temperature

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


def fit_sgd_outofcore(cache, layers, train_rows, val_rows=(), *, alphas=ALPHAS, folds=5, epochs=5,
                      seed=0, class_weight=None, refit_on="train+val", block_mb=32.0, say=None):
    """(fitted Pipeline([scale, TemperedSGD]), info) without holding the features in memory."""
    from sklearn.linear_model import SGDClassifier

    started = time.time()
    say = say or (lambda *a: None)
    train_rows = np.sort(np.asarray(train_rows))
    val_rows = np.sort(np.asarray(val_rows, dtype=int))
    labels = np.asarray(cache.labels)
    classes = np.arange(len(cache.class_names))
    dim = cache.feature_dim(layers)
    block = block_rows_for(dim, block_mb)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(np.concatenate([train_rows, val_rows])) if (
        refit_on == "train+val" and len(val_rows)) else train_rows

    # class weights as sample weights (partial_fit does not take class_weight='balanced')
    def weights_for(y, reference):
        if class_weight != "balanced":
            return None
        counts = np.bincount(labels[reference], minlength=len(classes)).astype(float)
        per_class = len(reference) / (len(classes) * np.maximum(counts, 1))
        return per_class[y]

    scaler = StandardScaler()
    for _, X in cache.iter_chunks(layers, fit_rows, block):
        scaler.partial_fit(X)

    y_train = labels[train_rows]
    cv = cv_splitter(y_train, folds, seed)
    fold_of = np.empty(len(train_rows), dtype=int)
    for f, (_, held) in enumerate(cv.split(np.zeros(len(y_train)), y_train)):
        fold_of[held] = f
    fold_by_row = dict(zip(train_rows.tolist(), fold_of.tolist()))
    n_folds = cv.get_n_splits()

    def new_model(alpha):
        return SGDClassifier(loss="hinge", alpha=alpha, average=True, random_state=seed)

    models = {(a, f): new_model(a) for a in alphas for f in range(n_folds)}
    for epoch in range(epochs):
        for idx, X in cache.iter_chunks(layers, train_rows, block, rng):
            order = rng.permutation(len(idx))
            idx, X = idx[order], scaler.transform(X[order])
            y = labels[idx]
            w = weights_for(y, train_rows)
            f_idx = np.array([fold_by_row[i] for i in idx])
            for (a, f), model in models.items():
                keep = f_idx != f
                if keep.any():
                    model.partial_fit(X[keep], y[keep], classes=classes,
                                      sample_weight=None if w is None else w[keep])
        say(f"  out-of-core SGD: epoch {epoch + 1}/{epochs} over {len(train_rows)} train rows "
            f"({n_folds} folds x {len(alphas)} alphas)")

    correct = {key: 0 for key in models}
    total = np.bincount(fold_of, minlength=n_folds)
    held_decisions = {a: [] for a in alphas}
    for idx, X in cache.iter_chunks(layers, train_rows, block):
        X = scaler.transform(X)
        y = labels[idx]
        f_idx = np.array([fold_by_row[i] for i in idx])
        for (a, f), model in models.items():
            held = f_idx == f
            if held.any():
                dec = model.decision_function(X[held])
                correct[(a, f)] += int(np.sum(classes[np.argmax(
                    dec if dec.ndim == 2 else np.stack([-dec, dec], 1), axis=1)] == y[held]))
                held_decisions[a].append((dec, y[held]))
    candidates = []
    for a in alphas:
        scores = [correct[(a, f)] / max(1, total[f]) for f in range(n_folds)]
        candidates.append({"params": {"clf__alpha": a}, "cv_mean": float(np.mean(scores)),
                           "cv_std": float(np.std(scores)), "scores": scores})
    best = max(candidates, key=lambda c: (c["cv_mean"], -c["params"]["clf__alpha"]))
    alpha = best["params"]["clf__alpha"]
    decisions = np.concatenate([d for d, _ in held_decisions[alpha]])
    held_y = np.concatenate([y for _, y in held_decisions[alpha]])
    temperature = fit_temperature(decisions, np.searchsorted(classes, held_y))

    final = new_model(alpha)
    for epoch in range(epochs):
        for idx, X in cache.iter_chunks(layers, fit_rows, block, rng):
            order = rng.permutation(len(idx))
            idx, X = idx[order], scaler.transform(X[order])
            y = labels[idx]
            final.partial_fit(X, y, classes=classes, sample_weight=weights_for(y, fit_rows))
    head = TemperedSGD(alpha=alpha, loss="hinge", class_weight=class_weight, random_state=seed)
    head.adopt(final, temperature)
    pipeline = Pipeline([("scale", scaler), ("clf", head)])
    info = {"kind": "sgd", "route": "out-of-core", "scaling": "standard", "pca": None,
            "class_weight": class_weight, "folds": n_folds, "grid": {"clf__alpha": list(alphas)},
            "best_params": {"clf__alpha": alpha}, "cv_scores": best["scores"],
            "cv_mean": best["cv_mean"], "cv_std": best["cv_std"],
            "candidates": [{k: v for k, v in c.items() if k != "scores"} for c in candidates],
            "refit_on": "train+val" if len(fit_rows) > len(train_rows) else "train",
            "epochs": epochs, "block_rows": block, "temperature": temperature,
            "fit_seconds": round(time.time() - started, 2)}
    return pipeline, info

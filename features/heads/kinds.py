"""Stage 2 heads: scikit-learn pipelines on cached features, chosen by cross-validation.

Every head is a `Pipeline([scaling..., optional PCA, classifier])` whose `predict_proba` is exactly
expressible as a few numpy ops on the flattened, concatenated features
(features/heads/layer_spec.py), so the network transplant (finetune) can reproduce it.
Probabilities are DEFINED as:

* logistic: softmax of the logits (binary: logits [0, z]), i.e. sklearn's own predict_proba;
* the others: as features/heads/estimators.py defines them (tempered softmax of SVM/SGD decision
  values; the MLP's own softmax).

Splits: hyper-parameters are chosen by stratified k-fold CV on the cache's train split only; the
final pipeline may be refitted on train+val; the MLP uses val for early stopping; the test split is
scored once, by the caller, at the very end.

Importing this module is cheap (scikit-learn is imported by the functions that use it), so the
command line can read KINDS and SCALINGS without it.
"""

from __future__ import annotations

import time

import numpy as np

from features.errors import UserError

LINEAR_KINDS = ("svm", "logistic", "sgd")
DEFAULT_FIT_KINDS = ("logistic", "svm", "mlp", "svm-rbf")   # what `fit` tries by default
NOT_TRANSPLANTABLE = ("svm-rbf", "svm-poly")   # kernel SVMs: no exact layer form
ROUTES = ("auto", "memory", "out-of-core")
KINDS = ("svm", "logistic", "mlp", "svm-rbf", "svm-poly", "sgd")
SCALINGS = ("standard", "l2", "l2+standard", "none")
SVM_C_GRID = (1e-4, 1e-3, 1e-2)
LOGISTIC_C_GRID = (1e-3, 1e-2, 1e-1)
KERNEL_C_GRID = (1.0, 10.0)
KERNEL_MAX_ROWS = 15_000  # training rows above which a kernel SVM is not fitted (O(n^2) kernel)


def make_pipeline(kind: str, *, scaling: str = "standard", pca=None, class_weight=None,
                  seed: int = 0):
    """An unfitted sklearn Pipeline for `kind` (see KINDS): scaling, optional PCA, classifier."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    if scaling not in SCALINGS:
        raise UserError(f"--scaling {scaling!r}: choose one of {', '.join(SCALINGS)}")
    steps = []
    if scaling in ("l2", "l2+standard"):
        steps.append(("l2", Normalizer(norm="l2")))
    if scaling in ("standard", "l2+standard"):
        steps.append(("scale", StandardScaler()))
    if pca:
        steps.append(("pca", PCA(n_components=pca, whiten=True, random_state=seed)))
    steps.append(("clf", _classifier(kind, class_weight, seed)))
    return Pipeline(steps)


def _classifier(kind: str, class_weight, seed: int):
    from features.heads import estimators as est

    if kind == "svm":
        return est.TemperedLinearSVC(class_weight=class_weight, random_state=seed)
    if kind == "logistic":
        return est.LinearLogistic(class_weight=class_weight, random_state=seed)
    if kind == "sgd":
        return est.TemperedSGD(class_weight=class_weight, random_state=seed)
    if kind == "mlp":
        return est.NumpyMLP(class_weight=class_weight, random_state=seed)
    if kind in ("svm-rbf", "svm-poly"):
        return est.TemperedKernelSVC(kernel=kind.split("-")[1], class_weight=class_weight,
                                     random_state=seed)
    raise UserError(f"unknown head kind {kind!r}; choose one of {', '.join(KINDS)}")


def too_large(kind: str, n_rows: int) -> str | None:
    """Why `kind` is not fitted on `n_rows` training rows (None: it is). A kernel SVM's kernel
    matrix grows as n^2 (8 n^2 bytes per fold) and libsvm's time faster still."""
    if kind in NOT_TRANSPLANTABLE and n_rows > KERNEL_MAX_ROWS:
        gib = 8 * n_rows**2 / 2**30
        return (f"{kind} is not fitted on {n_rows:,} training rows (more than {KERNEL_MAX_ROWS:,}):"
                f" its kernel matrix alone would take {gib:.0f} GiB and hours of libsvm; the "
                "linear heads (logistic, svm) and the MLP grow linearly with the rows")
    return None


def param_grid(kind: str) -> dict:
    """The log grid searched by CV for `kind` (empty: nothing to choose)."""
    if kind == "svm":
        return {"clf__C": list(SVM_C_GRID)}
    if kind == "logistic":
        return {"clf__C": list(LOGISTIC_C_GRID)}
    if kind in ("svm-rbf", "svm-poly"):
        return {"clf__C": list(KERNEL_C_GRID)}
    if kind == "sgd":
        return {"clf__alpha": [1e-4, 1e-3, 1e-2]}
    return {}


def check_labels(y, class_names, where="train split"):
    present = np.unique(y)
    if len(class_names) < 2:
        raise UserError(f"the cache has {len(class_names)} class; a classifier needs at least two "
                        "class folders: add another class and re-run extract")
    missing = [class_names[i] for i in range(len(class_names)) if i not in present]
    if missing and where == "cache":   # an empty class folder: no split can help
        raise UserError(f"the cache has no images of {', '.join(missing)} at all (empty class "
                        "folder); add images to it or remove the folder, then re-extract")
    if missing:
        raise UserError(f"the {where} has no images of {', '.join(missing)}; add images or "
                        "re-extract with another --seed/--test-size")


def cv_splitter(y, folds: int, seed: int, groups=None):
    """Stratified k-fold on the train split; with `groups` (the image of each augmented view),
    every view of an image stays in one fold, so CV never scores an image whose views it saw.
    Above search.HOLDOUT_ABOVE training rows, only the first fold is used: one stratified hold-out of
    1/k of the rows, which at that size measures accuracy to a fraction of a point at 1/k of the
    cost."""
    from features.heads.estimators import FirstSplit, smallest_class, stratified_folds
    from features.heads.search import is_large

    smallest = smallest_class(y, groups)
    folds = min(int(folds), smallest)
    if folds < 2:
        raise UserError(f"the train split has only {smallest} image(s) in some class; "
                        "cross-validation needs at least 2 per class: add images")
    splitter = stratified_folds(folds, seed, groups)
    return FirstSplit(splitter) if is_large(len(y)) else splitter


def fit_head(kind: str, X_train, y_train, X_val=None, y_val=None, *, scaling="standard", pca=None,
             class_weight=None, seed=0, folds=5, n_jobs=-1, refit_on="train+val", grid=None,
             mlp_params=None, groups=None, fold_set=None):
    """Choose hyper-parameters by stratified k-fold CV on (X_train, y_train), refit, return
    (fitted pipeline, info with cv scores and chosen params). Never sees any test data.
    `fold_set`: the folds' preprocessed data shared with other heads (features/heads/search.py)."""
    from features.heads.search import FoldSet, blas_threads, search

    started = time.time()
    pipe = make_pipeline(kind, scaling=scaling, pca=pca, class_weight=class_weight, seed=seed)
    if kind == "mlp" and mlp_params:
        pipe.set_params(**{f"clf__{k}": v for k, v in mlp_params.items()})
    if fold_set is None:
        fold_set = FoldSet(X_train, y_train, groups, cv_splitter(y_train, folds, seed, groups),
                           (X_val, y_val), n_jobs)
    grid = param_grid(kind) if grid is None else grid
    train, val = (X_train, y_train, groups), (X_val, y_val)
    if kind == "mlp":   # nothing to choose: the final fit runs alongside the folds
        found = search(pipe, grid, fold_set, alongside=lambda: _fit_mlp_pipeline(
            clone_with(pipe, {}), X_train, y_train, X_val, y_val, groups))
        final, clf = found.alongside, found.alongside.named_steps["clf"]
        refit = {"refit_on": "train (val for early stopping)", "epochs": clf.n_epochs_,
                 "best_epoch": clf.best_epoch_}
    else:
        found = search(pipe, grid, fold_set)
        final = clone_with(pipe, found.best_params)
        if found.temperature is not None:   # from the CV held-out decisions: no extra fits
            final.set_params(clf__temperature=found.temperature)
        hint = fold_set.preconditioner(pipe[:-1]) if hasattr(pipe[-1], "solve") else None
        with blas_threads(len(X_train), n_jobs):
            refit = {"refit_on": _refit(final, train, val, refit_on, hint)}
    info = {"kind": kind, "scaling": scaling, "pca": pca, "class_weight": class_weight,
            "folds": len(fold_set.splits), "grid": grid, "grouped_cv": groups is not None,
            "best_params": found.best_params, "cv_scores": found.cv_scores,
            "candidates": found.candidates, "temperature": found.temperature, **refit}
    info["cv_mean"] = float(np.mean(info["cv_scores"]))
    info["cv_std"] = float(np.std(info["cv_scores"]))
    info["fit_seconds"] = round(time.time() - started, 2)
    return final, info


def clone_with(pipe, params: dict):
    """An unfitted copy of `pipe` with `params` set."""
    from sklearn.base import clone

    return clone(pipe).set_params(**params)


def _refit(final, train, val, refit_on: str, preconditioner=None) -> str:
    """Fit the chosen pipeline on train, or on train+val; returns which rows it saw.
    `preconditioner`: the search's, reused by a linear head's solver (features/heads/solvers.py)."""
    X, y, groups = train
    X_val, y_val = val
    if refit_on == "train+val" and X_val is not None and len(X_val):
        # val rows are plain images: each its own group, numbered after the train images
        all_groups = None if groups is None else np.concatenate(
            [groups, np.max(groups) + 1 + np.arange(len(X_val))])
        _fit_pipeline(final, _stacked(X, X_val), np.concatenate([y, y_val]),
                      _fit_params(final, all_groups, preconditioner))
        return "train+val"
    _fit_pipeline(final, X, y, _fit_params(final, groups, preconditioner))
    return "train"


def _stacked(X, X_val):
    """X then X_val as one array: the array they are consecutive parts of when they are (as the
    fit stage loads them), else a copy."""
    base = X.base if isinstance(X, np.ndarray) else None
    if (base is not None and isinstance(X_val, np.ndarray) and X_val.base is base
            and base.shape[0] == len(X) + len(X_val) and X.ctypes.data == base.ctypes.data
            and base.flags.c_contiguous):
        return base
    return np.concatenate([X, X_val])


def _fit_pipeline(pipe, X, y, params: dict) -> None:
    """Pipeline.fit, lean on large data (features/heads/search.py): a linear head behind one
    StandardScaler reads the rows through a Standardized view (no scaled copy); other
    preprocessing is fitted and applied a block of rows at a time."""
    from features.heads.search import fit_prefix, fit_scaler, is_large, standard_only
    from features.heads.solvers import Standardized

    _, clf = pipe.steps[-1]
    params = {key.split("__", 1)[1]: value for key, value in params.items()}
    if is_large(len(X)) and hasattr(clf, "fit_standardized") and standard_only(pipe[:-1]):
        scaler = fit_scaler(pipe.steps[0][1], X)
        clf.fit_standardized(Standardized(X, None, scaler.mean_, scaler.scale_), y,
                             params.get("preconditioner"))
        return
    clf.fit(fit_prefix(pipe[:-1], X), y, **params)


def _fit_params(pipe, groups, preconditioner=None) -> dict:
    """Fit parameters of the classifier step that it accepts: `groups` when it holds rows out
    internally (temperature) and rows are augmented views; a linear solver's preconditioner."""
    import inspect

    name, step = pipe.steps[-1]
    accepted = inspect.signature(step.fit).parameters
    given = {"groups": None if groups is None else np.asarray(groups),
             "preconditioner": preconditioner}
    return {f"{name}__{key}": value for key, value in given.items()
            if value is not None and key in accepted}


def _fit_mlp_pipeline(pipe, X, y, X_val, y_val, groups=None):
    """Fit the preprocessing on X, then the MLP with early stopping on the transformed val rows."""
    pre = pipe[:-1]
    Xt = pre.fit_transform(X, y) if len(pre.steps) else X
    Xv = None
    if X_val is not None and len(X_val):
        Xv = pre.transform(X_val) if len(pre.steps) else X_val
    pipe.steps[-1][1].fit(Xt, y, X_val=Xv, y_val=y_val, groups=groups)
    return pipe

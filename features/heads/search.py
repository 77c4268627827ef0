"""Cross-validated choice of a head's hyper-parameters in one pass over the folds.

A plain GridSearchCV refits the scaler for every candidate, recomputes an SVM's kernel for every
C and starts every solver from zero. Here each fold's preprocessing (scaler, PCA) is fitted once
on the fold's own rows and shared by every head kind and candidate (`FoldSet`), kernel SVMs get
their kernel matrix once per fold, linear heads walk their C grid warm-started, and folds run in
parallel, one core each. The decisions are those of the plain search: every candidate is fitted
on the fold's training rows only and scored on its held-out rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from features.heads.estimators import TemperedKernelSVC, as_logits, fit_temperature
from features.heads.solvers import Standardized, linear_decision, row_blocks


@dataclass
class FoldData:
    """One fold: its rows after the pipeline's preprocessing fitted on its training rows."""

    X_fit: np.ndarray
    y_fit: np.ndarray
    X_held: np.ndarray
    y_held: np.ndarray
    held: np.ndarray              # row numbers of the held-out rows in the training set
    groups_fit: np.ndarray | None
    X_val: np.ndarray | None      # the cache's val split, same preprocessing (MLP early stopping)
    y_val: np.ndarray | None

    def kernel(self, model: TemperedKernelSVC):
        """(K fit x fit, K held x fit) for the model's kernel: made once per fold for all of the
        grid's C, and not kept (it is the largest thing a search holds)."""
        gamma = model.gamma_for(self.X_fit)
        return (model.kernel_matrix(self.X_fit, self.X_fit, gamma),
                model.kernel_matrix(self.X_held, self.X_fit, gamma))


class FoldSet:
    """The CV folds of one training set, each fold's preprocessed data made once per distinct
    preprocessing and shared by every head fitted on it (`fit` tries several kinds)."""

    def __init__(self, X, y, groups, splitter, val=(None, None), n_jobs: int = -1):
        self.X, self.y, self.groups = X, np.asarray(y), groups
        self.X_val, self.y_val = val
        self.splits = list(splitter.split(X, self.y, groups))
        self.n_jobs = n_jobs
        self._data: dict[str, list[FoldData]] = {}
        self._preconditioners: dict[str, object] = {}

    def preconditioner(self, prefix, data: list[FoldData] | None = None):
        """One preconditioner for the linear solvers of every fold, C and the final refit (from
        the first fold's rows: it only has to be close, see features/heads/solvers.py)."""
        from features.heads.solvers import Preconditioner

        key = repr(prefix)
        if key not in self._preconditioners:
            rows = (data or self.data(prefix))[0].X_fit
            self._preconditioners[key] = Preconditioner.of(rows)
        return self._preconditioners[key]

    def data(self, prefix, views: bool = False) -> list[FoldData]:
        """Every fold's rows through a clone of `prefix` (a Pipeline of the steps before the
        classifier) fitted on that fold's training rows. Kept for the next head unless the
        training set is large: there a copy would hold memory through the final refit.
        `views`: on a large set with standard scaling, give Standardized views instead of
        copies (for the linear solvers, which read them a block at a time)."""
        lazy = views and is_large(len(self.X)) and standard_only(prefix)
        key = repr(prefix) + ("views" if lazy else "")
        if key in self._data:
            return self._data[key]
        make = self._view if lazy else self._fold
        data = run_parallel([lambda split=split: make(prefix, *split) for split in self.splits],
                            self.n_jobs)
        if not is_large(len(self.X)):
            self._data[key] = data
        return data

    def _view(self, prefix, fit, held) -> FoldData:
        """A fold as Standardized views of the training rows: no copy of the data is made."""
        from sklearn.base import clone

        scaler = fit_scaler(clone(prefix.steps[0][1]), self.X, fit)
        view = (lambda rows: Standardized(self.X, rows, scaler.mean_, scaler.scale_))
        return FoldData(view(fit), self.y[fit], view(held), self.y[held], held,
                        None if self.groups is None else np.asarray(self.groups)[fit], None, None)

    def _fold(self, prefix, fit, held) -> FoldData:
        from sklearn.base import clone

        X_fit, X_held, X_val = self.X[fit], self.X[held], self.X_val
        if len(prefix.steps):
            pre = clone(prefix)
            X_fit = fit_prefix(pre, X_fit, out=X_fit)   # X[fit] is already a private copy
            X_held = transform_rows(pre, X_held, out=X_held)
            X_val = None if X_val is None or not len(X_val) else transform_rows(pre, X_val)
        as32 = (lambda a: None if a is None else np.ascontiguousarray(a, np.float32))
        return FoldData(as32(X_fit), self.y[fit], as32(X_held), self.y[held], held,
                        None if self.groups is None else np.asarray(self.groups)[fit], as32(X_val),
                        None if X_val is None else self.y_val)


def standard_only(prefix) -> bool:
    """Whether the preprocessing is one StandardScaler (foldable into a linear head's weights)."""
    from sklearn.preprocessing import StandardScaler

    steps = [step for _, step in prefix.steps]
    return (len(steps) == 1 and isinstance(steps[0], StandardScaler) and steps[0].with_mean
            and steps[0].with_std)


def fit_scaler(scaler, X, rows=None):
    """A StandardScaler fitted on X[rows] by partial_fit over blocks (small temporaries)."""
    for block in row_blocks(len(X) if rows is None else len(rows)):
        scaler.partial_fit(X[block] if rows is None else X[rows[block]])
    return scaler


HOLDOUT_ABOVE = 20_000   # training rows above which CV is one stratified hold-out fold


def is_large(n_rows: int) -> bool:
    """Above HOLDOUT_ABOVE rows: one hold-out fold, lean memory (README, "Large training sets")."""
    return n_rows > HOLDOUT_ABOVE


def fit_prefix(prefix, X, out=None) -> np.ndarray:
    """Fit the preprocessing steps (a Pipeline without its classifier) on X; return X through
    them as float32. On a large X, steps that allow it (scalers' partial_fit, the stateless
    Normalizer) are fitted and applied a block of rows at a time, into `out` when given (it may
    be X itself): scikit-learn's fit_transform makes temporaries the size of X, in float64."""
    from sklearn.preprocessing import Normalizer

    steps = [step for _, step in prefix.steps]
    lean = all(hasattr(s, "partial_fit") or isinstance(s, Normalizer) for s in steps)
    if not steps or not (lean and is_large(len(X))):
        return np.asarray(prefix.fit_transform(X) if steps else X, np.float32)
    for i, step in enumerate(steps):
        if not hasattr(step, "partial_fit"):
            step.fit(X[:1])
            continue
        for rows in row_blocks(len(X)):
            block = X[rows]
            for earlier in steps[:i]:
                block = earlier.transform(block)
            step.partial_fit(block)
    return transform_rows(prefix, X, out)


def transform_rows(prefix, X, out=None) -> np.ndarray:
    """X through fitted preprocessing steps as float32, a block of rows at a time (into `out`
    when given and of the output's width)."""
    if not len(prefix.steps):
        return X
    width = _width(prefix, X)
    if out is None or out.shape[1] != width:
        out = np.empty((len(X), width), np.float32)
    for rows in row_blocks(len(X)):
        out[rows] = prefix.transform(X[rows])
    return out


def _width(prefix, X) -> int:
    return prefix.transform(X[:1]).shape[1]


@dataclass
class SearchResult:
    best_params: dict
    cv_scores: list                 # the best candidate's accuracy on each fold
    candidates: list                # {params, cv_mean, cv_std} for every candidate
    held_out: np.ndarray | None     # the best candidate's held-out outputs, in training-row order
    temperature: float | None = None
    alongside: object = None


def search(pipe, grid: dict, folds: FoldSet, alongside=None) -> SearchResult:
    """Score every candidate of `grid` (params of the pipeline's last step, `clf__NAME`) on every
    fold; the best mean accuracy wins (the first candidate on ties, like GridSearchCV).
    `alongside`: a zero-argument callable run in the same pool (the final fit, when nothing is
    chosen); its result is `SearchResult.alongside`."""
    from sklearn.model_selection import ParameterGrid

    candidates = list(ParameterGrid(grid)) if grid else [{}]
    clf = pipe.steps[-1][1]
    linear = hasattr(clf, "solve")
    data = folds.data(pipe[:-1], views=linear)
    pre = folds.preconditioner(pipe[:-1], data) if linear else None
    tasks = [lambda fd=fd: _fold_outputs(clf, candidates, fd, pre) for fd in data]
    outputs = run_parallel(tasks + ([alongside] if alongside else []), folds.n_jobs)
    extra = outputs.pop() if alongside else None
    classes = np.unique(folds.y)
    scores = np.array([[_accuracy(out, fd.y_held, classes) for out in per_fold]
                       for per_fold, fd in zip(outputs, data)])        # (folds, candidates)
    best = int(np.argmax(scores.mean(axis=0)))
    held_out = _gather(outputs, data, best, len(folds.y))
    result = SearchResult(
        best_params=dict(candidates[best]) if grid else {},
        cv_scores=[float(s) for s in scores[:, best]],
        candidates=[{"params": dict(p), "cv_mean": float(m), "cv_std": float(s)} for p, m, s in
                    zip(candidates, scores.mean(axis=0), scores.std(axis=0))] if grid else [],
        held_out=held_out, alongside=extra)
    if "temperature" in clf.get_params():   # fitted on held-out decisions only
        rows = np.concatenate([fd.held for fd in data])
        result.temperature = fit_temperature(held_out[rows], np.searchsorted(classes, folds.y[rows]))
    return result


def _fold_outputs(clf, candidates, fd: FoldData, preconditioner) -> list:
    """The held-out decision values (or probabilities) of each candidate fitted on this fold."""
    from sklearn.base import clone

    models = [clone(clf).set_params(**{k.split("__", 1)[1]: v for k, v in params.items()})
              for params in candidates]
    if hasattr(clf, "solve"):   # linear heads: one preconditioner, warm start along the grid
        previous, outputs = None, []
        for model in models:
            model.solve(fd.X_fit, fd.y_fit, preconditioner=preconditioner, init=previous)
            previous = model.solution_
            outputs.append(linear_decision(fd.X_held, model.coef_, model.intercept_))
        return outputs
    if isinstance(clf, TemperedKernelSVC):
        K_fit, K_held = fd.kernel(clf)
        return [m.fit_kernel(K_fit, fd.y_fit).svc_.decision_function(K_held) for m in models]
    return [_fit_and_score(model, fd) for model in models]


def _fit_and_score(model, fd: FoldData):
    """Any other classifier: fit on the fold (with the val rows for early stopping when it takes
    them), return its held-out decision values or probabilities."""
    import inspect

    if "X_val" in inspect.signature(model.fit).parameters:
        model.fit(fd.X_fit, fd.y_fit, X_val=fd.X_val, y_val=fd.y_val, groups=fd.groups_fit)
    else:
        model.fit(fd.X_fit, fd.y_fit)
    if hasattr(model, "decision_function"):
        return model.decision_function(fd.X_held)
    return model.predict_proba(fd.X_held)


def _accuracy(output, y_held, classes) -> float:
    return float(np.mean(classes[np.argmax(as_logits(output), axis=1)] == y_held))


def _gather(outputs, data: list[FoldData], best: int, n_rows: int) -> np.ndarray:
    """The best candidate's held-out outputs of all folds, placed at their training rows (a
    hold-out design leaves the other rows at zero; only held rows are used)."""
    first = np.asarray(outputs[0][best])
    gathered = np.zeros((n_rows,) + first.shape[1:])
    for per_fold, fd in zip(outputs, data):
        gathered[fd.held] = per_fold[best]
    return gathered


def n_workers(n_jobs: int, n_tasks: int) -> int:
    cores = os.cpu_count() or 1
    wanted = cores if n_jobs in (None, -1) else max(1, cores + 1 + n_jobs if n_jobs < 0 else n_jobs)
    return max(1, min(wanted, n_tasks))


def run_parallel(tasks, n_jobs: int) -> list:
    """Run zero-argument callables in threads (numpy and libsvm release the GIL), the allowed
    cores shared out: one BLAS thread per task when there are tasks for every core (on fold-sized
    matrices a multi-threaded BLAS waits more than it computes), all of them for a lone task
    (the one hold-out fold of a large training set)."""
    from threadpoolctl import threadpool_limits

    allowed = n_workers(n_jobs, 1 << 16)
    workers = min(allowed, len(tasks)) or 1
    with threadpool_limits(max(1, allowed // workers)):
        if workers == 1:
            return [task() for task in tasks]
        from joblib import Parallel, delayed

        return Parallel(n_jobs=workers, prefer="threads")(delayed(task)() for task in tasks)


def blas_threads(n_rows: int, n_jobs: int):
    """A context for one big fit (the final refit): all allowed cores for BLAS above
    HOLDOUT_ABOVE rows, where products are large enough to share, one below."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n_workers(n_jobs, 1 << 16) if is_large(n_rows) else 1)

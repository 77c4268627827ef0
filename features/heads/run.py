"""Stage 2 orchestration: cache -> CV-chosen head(s) -> one test score -> head file + report.

Used by the `fit-svm`, `fit-logistic`, `fit-mlp` and `fit` commands (bottleneck/cli/fit.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from features.atomic import check_writable
from features.cache.store import Cache, newest_cache
from features.errors import UserError
from features.heads.headfile import make_bundle, save_head
from features.heads.kinds import (
    DEFAULT_FIT_KINDS,
    KINDS,
    LINEAR_KINDS,
    NOT_TRANSPLANTABLE,
    ROUTES,
    check_labels,
    cv_splitter,
    fit_head,
    too_large,
)
from features.heads.outofcore import (
    block_rows_for,
    default_memory_budget_mb,
    fit_sgd_outofcore,
    memory_estimate_mb,
)
from features.reports import leaderboard
from features.reports.metrics import classification_text, test_metrics, write_report
from features.reports.mistakes import gallery_data


@dataclass
class FitOptions:
    features: str | None = None
    layer: str | None = None
    out: str | None = None
    report: str | None = None
    seed: int = 0
    n_jobs: int = -1       # CV folds in parallel, one core each; -1 = all cores
    class_weight: str | None = None     # 'balanced' or None
    folds: int = 5
    scaling: str = "standard"
    pca: float | int | None = None
    route: str = "auto"
    max_memory_mb: float | None = None
    refit_on: str = "train+val"
    top_k: int = 3
    mlp: dict = field(default_factory=dict)   # hidden, l2, max_epochs, patience, ...
    sgd_epochs: int = 5                         # passes of the out-of-core SGD route
    views: bool = True     # train on the cache's augmented views too (extract --views K)
    tta: bool = False      # score test images on the mean of their plain and augmented views
    exclude: str | None = None   # an exclude list (features/audit/exclude.py): rows left out


def parse_pca(value):
    """--pca: none, an integer number of components, or a fraction of variance in (0, 1)."""
    if value in (None, "", "none", "0"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"--pca {value!r}: give none, a number of components (e.g. 256) or a "
                        "fraction of variance (e.g. 0.95)") from None
    if 0 < number < 1:
        return number
    if number >= 1 and number == int(number):
        return int(number)
    raise UserError(f"--pca {value!r}: give none, a number of components or a fraction in (0, 1)")


_BLOCK = 4096   # images read from the cache at a time


def _kept_rows(cache: Cache, exclude: str | None, say) -> np.ndarray:
    """A mask of the rows not named by the exclude list (every row without one)."""
    kept = np.ones(len(cache), bool)
    if exclude:
        from features.audit.exclude import excluded_rows, read_exclude

        listed = read_exclude(exclude, cache.provenance().data_dir)
        kept[excluded_rows(listed, cache.paths, exclude, say)] = False
        say(f"excluded: {int((~kept).sum())} images listed in {exclude} (from every split)")
    return kept


class _Data:
    """The cache's rows by split, with lazily loaded in-memory features (never test until asked)."""

    def __init__(self, cache: Cache, opts: FitOptions, say):
        self.cache = cache
        self.layer, self.layers = cache.select_layers(opts.layer)
        check_labels(np.unique(cache.labels), cache.class_names, where="cache")
        kept = _kept_rows(cache, opts.exclude, say)
        self.excluded = int(len(cache) - kept.sum())
        self.train = np.flatnonzero(cache.split_mask("train") & kept)
        self.val = np.flatnonzero(cache.split_mask("val") & kept)
        self.test = np.flatnonzero(cache.split_mask("test") & kept)
        if not len(self.train):
            raise UserError(f"{cache.path} has no training images; re-extract with smaller "
                            "--test-size/--val-size")
        check_labels(cache.labels[self.train], cache.class_names)
        self.dim = cache.feature_dim(self.layers)
        self.views = cache.n_views if opts.views else 0
        if opts.tta and not cache.n_views:
            raise UserError("--tta needs augmented views in the cache; re-extract with "
                            "--views K (e.g. 4)")
        self.tta = opts.tta
        budget = opts.max_memory_mb or default_memory_budget_mb()
        need = memory_estimate_mb(len(self.train) * (1 + self.views) + len(self.val), self.dim)
        if opts.route not in ROUTES:
            raise UserError(f"--route {opts.route!r}: choose one of {', '.join(ROUTES)}")
        self.route = opts.route if opts.route != "auto" else (
            "memory" if need <= budget else "out-of-core")
        if self.route == "out-of-core" and self.tta:
            raise UserError("--tta needs the in-memory route; drop --tta or raise --max-memory-mb")
        if self.route == "out-of-core" and self.views:
            say("notice: the out-of-core route trains on the plain views only")
            self.views = 0
        self.memory = {"estimate_mb": round(need, 1), "budget_mb": round(budget, 1)}
        self._xy = None
        self._folds = None

    @property
    def n_rows(self) -> int:
        """Training rows the heads fit on (each image's plain and augmented views)."""
        return len(self.train) * (1 + self.views)

    def folds(self, opts: FitOptions):
        """The CV folds of the training rows, their preprocessing shared by every head kind."""
        from features.heads.search import FoldSet

        if self._folds is None:
            X, y, X_val, y_val, groups = self.xy()
            self._folds = FoldSet(X, y, groups, cv_splitter(y, opts.folds, opts.seed, groups),
                                  (X_val, y_val), opts.n_jobs)
        return self._folds

    def xy(self):
        """(X_train, y_train, X_val, y_val, groups): with views, each training image contributes
        its plain and K augmented rows, and `groups` names the image of each row. X_train and
        X_val are consecutive parts of one array, filled a block of images at a time: no copy
        of the whole matrix is ever made, and a refit on train+val needs none either."""
        if self._xy is None:
            per_image = 1 + self.views
            n_train = len(self.train) * per_image
            X = np.empty((n_train + len(self.val), self.dim), np.float32)
            for start in range(0, len(self.train), _BLOCK):
                rows = self.train[start:start + _BLOCK]
                block = X[start * per_image:(start + len(rows)) * per_image]
                block = block.reshape(len(rows), per_image, self.dim)
                block[:, 0] = self.cache.features(self.layers, rows)
                if self.views:
                    block[:, 1:] = self.view_rows(rows)
            for start in range(0, len(self.val), _BLOCK):
                rows = self.val[start:start + _BLOCK]
                X[n_train + start:n_train + start + len(rows)] = self.cache.features(self.layers,
                                                                                      rows)
            y = np.repeat(self.cache.labels[self.train], per_image)
            groups = np.repeat(self.train, per_image) if self.views else None
            self._xy = (X[:n_train], y, X[n_train:], self.cache.labels[self.val], groups)
        return self._xy

    def view_rows(self, rows) -> np.ndarray:
        """(n, K, D): the augmented views of `rows`, layers concatenated like the plain view."""
        return self.cache.views(self.layers, rows)


def _fit_kind(kind, data: _Data, opts: FitOptions, say):
    if data.route == "out-of-core":
        if kind not in LINEAR_KINDS:
            raise UserError(f"the features ({data.dim}-d x {len(data.train) + len(data.val)} rows, "
                            f"~{data.memory['estimate_mb']:.0f} MB) do not fit the memory budget "
                            f"({data.memory['budget_mb']:.0f} MB) for a {kind} head; use fit-svm or "
                            "fit-logistic (out-of-core SGD route), or raise --max-memory-mb")
        if opts.pca:
            raise UserError("--pca needs the in-memory route; drop --pca or raise --max-memory-mb")
        pipeline, info = fit_sgd_outofcore(
            data.cache, data.layers, data.train, data.val, folds=opts.folds, epochs=opts.sgd_epochs,
            seed=opts.seed, class_weight=opts.class_weight, refit_on=opts.refit_on, say=say)
        info["requested"] = kind
        return "sgd", pipeline, info
    X_train, y_train, X_val, y_val, groups = data.xy()
    if isinstance(opts.pca, int):
        fold_rows = len(X_train) * (opts.folds - 1) // opts.folds
        if opts.pca > min(data.dim, fold_rows):
            raise UserError(f"--pca {opts.pca} exceeds what the CV folds can give (at most "
                            f"{min(data.dim, fold_rows)} components: {data.dim}-d features, "
                            f"~{fold_rows} rows per training fold); pass a smaller number or a "
                            "fraction such as 0.95")
    pipeline, info = fit_head(kind, X_train, y_train, X_val, y_val, scaling=opts.scaling,
                              pca=opts.pca, class_weight=opts.class_weight, seed=opts.seed,
                              folds=opts.folds, n_jobs=opts.n_jobs, refit_on=opts.refit_on,
                              mlp_params=opts.mlp, groups=groups, fold_set=data.folds(opts))
    info["route"] = "in-memory"
    return kind, pipeline, info


def _score_test(pipeline, data: _Data, opts: FitOptions):
    """The one and only look at the test split: (metrics or None, report text, proba, y)."""
    cache = data.cache
    if not len(data.test):
        return None, "", None, None
    if not data.tta:
        parts, ys = [], []
        # blocks in row order (no rng), so proba and y follow data.test; a block at a time so
        # that scoring a large test split holds no copy of its features
        for idx, X in cache.iter_chunks(data.layers, data.test, block_rows_for(data.dim)):
            parts.append(pipeline.predict_proba(X))
            ys.append(cache.labels[idx])
        proba, y = np.concatenate(parts), np.concatenate(ys)
    else:   # the mean over the plain view and every augmented view
        proba = pipeline.predict_proba(cache.features(data.layers, data.test))
        views = data.view_rows(data.test)
        for k in range(views.shape[1]):
            proba = proba + pipeline.predict_proba(views[:, k])
        proba = proba / (1 + views.shape[1])
        y = cache.labels[data.test]
    names = cache.class_names
    metrics = test_metrics(y, proba, names, top_k=(1, opts.top_k))
    return metrics, classification_text(y, proba, names), proba, y


def _cv_block(info):
    return {"mean": info["cv_mean"], "std": info["cv_std"], "folds": info["folds"],
            "scores": info["cv_scores"], "best_params": info["best_params"],
            "candidates": info.get("candidates", [])}


def _finish(kind, pipeline, info, data: _Data, opts: FitOptions, out: str, say, table=None):
    metrics, text, proba, y = _score_test(pipeline, data, opts)
    cache = data.cache
    scores = {"cv": _cv_block(info), "test": metrics, "route": info["route"],
              "refit_on": info.get("refit_on"), "fit_seconds": info["fit_seconds"]}
    if table is not None:
        scores["ranking"] = table
    options = {"scaling": info.get("scaling"), "pca": info.get("pca"),
               "class_weight": opts.class_weight, "seed": opts.seed, "folds": info["folds"],
               "best_params": info["best_params"],
               "exclude": {"file": opts.exclude, "n": data.excluded} if opts.exclude else None}
    save_head(out, make_bundle(kind, pipeline, cache.provenance(), data.layer, data.layers,
                               scores, options))
    leaderboard.record_head(out, kind, cv_mean=info["cv_mean"], cv_std=info["cv_std"],
                            test_accuracy=None if metrics is None else metrics["accuracy"],
                            fit_seconds=info["fit_seconds"], provenance=cache.provenance())
    summary = {
        "head": kind, "path": out, "route": info["route"],
        "test_accuracy": None if metrics is None else metrics["accuracy"],
        "balanced_accuracy": None if metrics is None else metrics["balanced_accuracy"],
        "macro_f1": None if metrics is None else metrics["macro_f1"],
        "top_k": None if metrics is None else metrics["top_k"],
        "cv_score": info["cv_mean"], "cv_std": info["cv_std"], "cv_folds": info["folds"],
        "best_params": info["best_params"], "refit_on": info.get("refit_on"),
        "layer": data.layer, "feature_layers": data.layers, "feature_dim": data.dim,
        "n": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "excluded": {"file": opts.exclude, "n": data.excluded} if opts.exclude else None,
        "views": data.views, "tta": data.tta, "grouped_cv": bool(info.get("grouped_cv")),
        "features": cache.path, "fit_seconds": info["fit_seconds"], "memory": data.memory,
        "generation": cache.provenance().generation,
    }
    if table is not None:
        summary["table"] = table
    if opts.report:
        if metrics is None:
            say(f"notice: {cache.path} has no test split; --report has nothing to score")
        else:
            summary["report"] = write_report(
                opts.report, metrics=metrics, cv=_cv_block(info), text=text,
                class_names=cache.class_names,
                head={"kind": kind, "path": out, "layer": data.layer,
                      "feature_layers": data.layers, "route": info["route"],
                      "generation": cache.provenance().generation},
                title=f"{kind} head, test split",
                gallery=gallery_data(y, proba, cache.class_names,
                                     paths=[cache.paths[i] for i in data.test],
                                     data_dir=cache.provenance().data_dir))
    if metrics is not None:
        summary["test"] = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
    return summary


def _check_outputs(opts: FitOptions, default_out: str) -> None:
    """The head file and the report folder must be writable before any head is fitted: an
    output error after minutes of fitting would lose the work."""
    check_writable(opts.out or default_out)
    if opts.report and os.path.exists(opts.report) and not os.path.isdir(opts.report):
        raise UserError(f"--report {opts.report} is a file; give a folder for the report")


def _open(opts: FitOptions) -> Cache:
    path = opts.features or newest_cache()
    if not os.path.isfile(path):
        raise UserError(f"--features {path}: no such file; run `python cli.py extract` first or "
                        "pass an existing cache")
    return Cache(path)


def _say_route(data: _Data, say):
    say(f"features: {data.cache.path} layer {data.layer} ({', '.join(data.layers)}; "
        f"{data.dim}-d); train {len(data.train)}, val {len(data.val)}, test {len(data.test)}")
    if data.views:
        say(f"training on the plain view + {data.views} augmented views of each training image; "
            "CV folds keep all views of an image together"
            + ("; test scored on the mean of all views (TTA)" if data.tta else ""))
    say(f"route: {data.route} (estimated {data.memory['estimate_mb']:.0f} MB of "
        f"{data.memory['budget_mb']:.0f} MB budget"
        + ("; streaming HDF5 chunks through SGD partial_fit)" if data.route == "out-of-core" else ")"))


def fit_one(kind: str, opts: FitOptions, say=print) -> dict:
    """Fit one head kind, score the test split once, save the head (and report)."""
    if kind not in KINDS:
        raise UserError(f"unknown head {kind!r}; choose one of {', '.join(KINDS)}")
    _check_outputs(opts, f"{kind}.joblib")
    leaderboard.check_outputs(opts.out or f"{kind}.joblib")
    with _open(opts) as cache:
        data = _Data(cache, opts, say)
        reason = data.route != "out-of-core" and too_large(kind, data.n_rows)
        if reason:
            raise UserError(f"{reason}; use fit-svm (linear) or fit-logistic")
        _say_route(data, say)
        kind, pipeline, info = _fit_kind(kind, data, opts, say)
        out = leaderboard.head_file(opts.out or f"{kind}.joblib", kind, say)
        summary = _finish(kind, pipeline, info, data, opts, out, say)
    board = leaderboard.load_board(out)
    summary.update(board.to_json())
    say_summary(summary, say)
    leaderboard.say_board(board, say)
    return summary


def fit_best(opts: FitOptions, kinds=DEFAULT_FIT_KINDS, say=print) -> dict:
    """Fit every kind, rank by CV score on the train split, test and save only the winner (as
    <kind>.joblib by default); the leaderboard decides whether it becomes best.joblib."""
    _check_outputs(opts, "best.joblib")
    leaderboard.check_outputs(opts.out or "best.joblib")
    with _open(opts) as cache:
        data = _Data(cache, opts, say)
        _say_route(data, say)
        fitted = [_fit_and_say(kind, data, opts, say) for kind in _fittable(kinds, data, say)]
        order = sorted(range(len(fitted)), key=lambda i: (-fitted[i][2]["cv_mean"], i))
        table = [{"rank": r + 1, "head": fitted[i][0], "cv_score": fitted[i][2]["cv_mean"],
                  "cv_std": fitted[i][2]["cv_std"], "best_params": fitted[i][2]["best_params"],
                  "fit_seconds": fitted[i][2]["fit_seconds"]} for r, i in enumerate(order)]
        kind, pipeline, info = fitted[order[0]]
        out = leaderboard.head_file(opts.out or f"{kind}.joblib", kind, say)
        summary = _finish(kind, pipeline, info, data, opts, out, say, table=table)
        if kind in NOT_TRANSPLANTABLE:
            summary["transplantable"] = _save_transplantable(fitted, order, data, out, say)
    _say_table(table, say)
    board = leaderboard.load_board(out)
    summary.update(board.to_json())
    say_summary(summary, say)
    leaderboard.say_board(board, say, table=True)
    return summary


def _fittable(kinds, data: _Data, say) -> list:
    """The kinds that apply to this data: only SGD out of core; no kernel SVM on many rows
    (each skip said in one line, with the reason)."""
    if data.route == "out-of-core":
        say("out-of-core route: only the linear SGD head applies")
        return ["sgd"]
    keep = []
    for kind in kinds:
        reason = too_large(kind, data.n_rows)
        if reason:
            say(f"skipped: {reason}")
        else:
            keep.append(kind)
    if not keep:
        raise UserError(f"no head in {', '.join(kinds)} applies to {data.n_rows:,} training rows; "
                        "use --heads logistic,svm,mlp")
    return keep


def _fit_and_say(kind, data: _Data, opts: FitOptions, say):
    say(f"fitting {kind} ...")
    real, pipeline, info = _fit_kind(kind, data, opts, say)
    say(f"  {real}: cv {info['cv_mean']:.4f} +/- {info['cv_std']:.4f} "
        f"{info['best_params'] or ''} ({info['fit_seconds']:.1f} s)")
    return real, pipeline, info


def _say_table(table, say) -> None:
    say("ranked by cross-validated accuracy on the train split:")
    say(f"  {'rank':>4}  {'head':<10} {'cv mean':>8} {'cv std':>7}  {'seconds':>7}  params")
    for row in table:
        say(f"  {row['rank']:>4}  {row['head']:<10} {row['cv_score']:>8.4f} {row['cv_std']:>7.4f}"
            f"  {row['fit_seconds']:>7.1f}  {row['best_params'] or '-'}")


def _save_transplantable(fitted, order, data: _Data, out: str, say):
    """When a kernel SVM wins, also keep the best head `finetune` can put on the network, saved
    beside the winner as <out>-transplantable.joblib, and on the leaderboard. It is not scored on
    test: the test split is looked at once, for the winner; finetune reports its own test score."""
    for i in order:
        kind, pipeline, info = fitted[i]
        if kind in NOT_TRANSPLANTABLE:
            continue
        path = os.path.splitext(out)[0] + "-transplantable.joblib"
        scores = {"cv": _cv_block(info), "test": None, "route": info["route"],
                  "refit_on": info.get("refit_on"), "fit_seconds": info["fit_seconds"]}
        save_head(path, make_bundle(kind, pipeline, data.cache.provenance(), data.layer,
                                    data.layers, scores))
        leaderboard.record_head(path, kind, cv_mean=info["cv_mean"], cv_std=info["cv_std"],
                                test_accuracy=None, fit_seconds=info["fit_seconds"],
                                provenance=data.cache.provenance())
        say(f"{kind} (cv {info['cv_mean']:.4f}) is the best head finetune can transplant: "
            f"saved to {path} (`python cli.py finetune --from-head {path}`)")
        return {"head": kind, "path": path, "cv_score": info["cv_mean"]}
    return None


def say_summary(s: dict, say):
    test = "no test split" if s["test_accuracy"] is None else (
        f"test accuracy {s['test_accuracy']:.4f}, balanced {s['balanced_accuracy']:.4f}, "
        f"macro F1 {s['macro_f1']:.4f}"
        + "".join(f", {k} {v:.4f}" for k, v in (s["top_k"] or {}).items() if k != "top1"))
    say(f"{s['head']} head -> {s['path']}: cv {s['cv_score']:.4f} +/- {s['cv_std']:.4f} "
        f"({s['cv_folds']}-fold on train), {test} (n={s['n']['test']}); route {s['route']}, "
        f"refit on {s['refit_on']}, {s['fit_seconds']:.1f} s")
    if s.get("report"):
        say(f"report: {', '.join(s['report'].values())}")

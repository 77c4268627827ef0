"""Stage 2 speed: our `fit` against the stock scikit-learn route on the same cache, folds and grids,
and `fit --heads logistic,svm` at 10k-100k rows.

    python bench/heads.py flowers --features /tmp/heads_bench/flowers_avgmax5.h5
    python bench/heads.py scale --rows 10000,30000,100000 --dim 1024 --classes 100
    python bench/heads.py scale --features /tmp/heads_bench/flowers_views24.h5

Each side runs as its own process and is timed whole (imports, loading, fitting, the test score),
as a user would see it; peak RSS is the child's. Ratios, not seconds, are the figures to compare:
this machine is shared. See BENCHMARKS.md for the recorded runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def timed(cmd: list[str]) -> tuple[float, dict, float]:
    """(wall seconds, parsed JSON stdout, this child's peak RSS in MB, read from wait4)."""
    start = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT) as child:
        out, err = child.stdout.read(), child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return seconds, json.loads(out), usage.ru_maxrss / 1024


def ours(features: str, heads: str, out_dir: str) -> tuple[float, dict, float]:
    return timed([sys.executable, "cli.py", "fit", "--features", features, "--layer", "all",
                  "--heads", heads, "--out", os.path.join(out_dir, "ours.joblib"), "--json"])


def stock(features: str) -> tuple[float, dict, float]:
    return timed([sys.executable, os.path.abspath(__file__), "stock-child", "--features",
                  features])


def stock_route(features: str) -> dict:
    """What a user writes with scikit-learn: the same cache rows, folds and grids, n_jobs=-1."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    from features.cache.store import Cache
    from features.heads.kinds import KERNEL_C_GRID, LOGISTIC_C_GRID, SVM_C_GRID, cv_splitter

    warnings.simplefilter("ignore", ConvergenceWarning)
    with Cache(features) as cache:
        _, layers = cache.select_layers("all")
        rows = {s: np.flatnonzero(cache.split_mask(s)) for s in ("train", "test")}
        X, y = cache.features(layers, rows["train"]), cache.labels[rows["train"]]
        X_test, y_test = cache.features(layers, rows["test"]), cache.labels[rows["test"]]
    cv = cv_splitter(y, 5, 0)
    heads, timings = {}, {}

    def grid(name, clf, Cs):
        start = time.perf_counter()
        search = GridSearchCV(make_pipeline(StandardScaler(), clf), {clf.__class__.__name__.lower()
                              + "__C": list(Cs)}, cv=cv, n_jobs=-1).fit(X, y)
        heads[name] = (search.best_score_, search.best_estimator_)
        timings[name] = time.perf_counter() - start

    start = time.perf_counter()
    logistic = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=list(LOGISTIC_C_GRID), cv=cv, n_jobs=-1, max_iter=1000)).fit(X, y)
    scores = logistic[-1].scores_
    heads["logistic"] = (float(np.max(np.mean(next(iter(scores.values())), axis=0))), logistic)
    timings["logistic"] = time.perf_counter() - start
    grid("svm", LinearSVC(max_iter=5000), SVM_C_GRID)
    grid("svm-rbf", SVC(kernel="rbf"), KERNEL_C_GRID)
    start = time.perf_counter()
    mlp = make_pipeline(StandardScaler(), MLPClassifier(early_stopping=True, random_state=0))
    heads["mlp"] = (float(np.mean(cross_val_score(mlp, X, y, cv=cv, n_jobs=-1))), mlp.fit(X, y))
    timings["mlp"] = time.perf_counter() - start
    winner = max(heads, key=lambda k: heads[k][0])
    return {"cv": {k: float(v[0]) for k, v in heads.items()}, "seconds": timings,
            "winner": winner,
            "test_accuracy": float(np.mean(heads[winner][1].predict(X_test) == y_test))}


def flowers(args) -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        our_s, our, our_mb = ours(args.features, "logistic,svm,mlp,svm-rbf", out_dir)
    their_s, theirs, their_mb = stock(args.features)
    ranking = {row["head"]: row for row in our["table"]}
    print(f"cache: {args.features}")
    print(f"{'head':<10} {'ours cv':>8} {'stock cv':>9} {'ours s':>7} {'stock s':>8}")
    for kind in ("logistic", "svm", "mlp", "svm-rbf"):
        print(f"{kind:<10} {ranking[kind]['cv_score']:>8.4f} {theirs['cv'][kind]:>9.4f} "
              f"{ranking[kind]['fit_seconds']:>7.1f} {theirs['seconds'][kind]:>8.1f}")
    print(f"winner: ours {our['head']} test {our['test_accuracy']:.4f}; "
          f"stock {theirs['winner']} test {theirs['test_accuracy']:.4f}")
    print(f"whole process: ours {our_s:.1f} s ({our_mb:.0f} MB peak), stock {their_s:.1f} s "
          f"({their_mb:.0f} MB peak); stock / ours = {their_s / our_s:.2f}x")


def synthetic_cache(path: str, rows: int, dim: int, classes: int, seed: int = 0) -> str:
    """Features shaped like a CNN's: non-negative, correlated through a low-rank mix, one mean
    per class; split 70/10/20 like extract's."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import write_synthetic_cache

    from features.cache.split import assign_split

    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    means = rng.normal(size=(classes, 64)).astype(np.float32)
    mix = rng.normal(size=(64, dim)).astype(np.float32) / 8
    X = np.empty((rows, dim), np.float32)
    for start in range(0, rows, 10_000):
        part = slice(start, start + 10_000)
        latent = means[y[part]] + 1.5 * rng.normal(size=(len(y[part]), 64)).astype(np.float32)
        X[part] = np.maximum(latent @ mix + 0.3 * rng.normal(size=(len(y[part]), dim)), 0)
    split = assign_split(y, test_size=0.2, val_size=0.1, seed=seed)
    return write_synthetic_cache(path, {"feat": X}, y, [f"c{i:03d}" for i in range(classes)],
                                 split=split, seed=seed)


def scale(args) -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        cases = ([(args.features, None)] if args.features else
                 [(synthetic_cache(os.path.join(out_dir, f"s{n}.h5"), n, args.dim, args.classes),
                   n) for n in map(int, args.rows.split(","))])
        for path, n in cases:
            matrix_mb = _matrix_mb(path)
            seconds, result, peak = ours(path, args.heads, out_dir)
            ranking = {row["head"]: row for row in result["table"]}
            cv = ", ".join(f"{k} cv {v['cv_score']:.4f} ({v['fit_seconds']:.0f} s)"
                           for k, v in ranking.items())
            print(f"{n or path}: {result['n']} rows, {result['feature_dim']}-d, "
                  f"{result['cv_folds']} fold(s): {seconds:.1f} s whole process; {cv}; winner "
                  f"test {result['test_accuracy']:.4f}; peak RSS {peak:.0f} MB = "
                  f"{peak / matrix_mb:.2f}x the float32 feature matrix ({matrix_mb:.0f} MB)",
                  flush=True)


def _matrix_mb(path: str) -> float:
    from features.cache.store import Cache

    with Cache(path) as cache:
        _, layers = cache.select_layers("all")
        rows = len(cache.labels) * (1 + cache.n_views)
        return rows * cache.feature_dim(layers) * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("flowers", help="ours vs the stock scikit-learn route on one cache")
    p.add_argument("--features", default="/tmp/heads_bench/flowers_avgmax5.h5")
    p = sub.add_parser("scale", help="fit --heads logistic,svm at several sizes")
    p.add_argument("--rows", default="10000,30000,100000")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--heads", default="logistic,svm")
    p.add_argument("--features", default=None, help="a real cache instead of synthetic ones")
    p = sub.add_parser("stock-child")
    p.add_argument("--features", required=True)
    args = parser.parse_args()
    if args.what == "stock-child":
        print(json.dumps(stock_route(args.features)))
    else:
        {"flowers": flowers, "scale": scale}[args.what](args)


if __name__ == "__main__":
    main()

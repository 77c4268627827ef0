"""The MLP head's trainer side by side: scikit-learn's MLPClassifier (features/heads/mlp.py, what
`fit-mlp` and `fit` use) against the numpy trainer it replaced (bench/numpy_mlp.py), each through
the same `fit_head("mlp", ...)`: the same CV folds of the train split, the same early-stopping rows
(the cache's val split), the same scaling, the test split scored once.

    python bench/mlp.py flowers --features /tmp/heads_bench/flowers_avgmax5.h5
    python bench/mlp.py scale --rows 100000 --trainers sklearn      # one locked run per trainer

Trainers: `sklearn` (no dropout: MLPClassifier has none), `numpy` (dropout 0.5, the old default),
`numpy-nodrop` (dropout 0, to tell the trainer's effect from the dropout's). Seconds are `fit`'s
own (all folds in parallel threads, then the final fit alongside), in one process: compare ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRAINERS = {"sklearn": 0.0, "numpy": 0.5, "numpy-nodrop": 0.0}   # trainer: dropout


def load(path: str):
    """(X_train, y_train, X_val, y_val, X_test, y_test) of every layer of a cache, concatenated."""
    from features.cache.store import Cache

    with Cache(path) as cache:
        _, layers = cache.select_layers("all")
        out = []
        for split in ("train", "val", "test"):
            rows = np.flatnonzero(cache.split_mask(split))
            out += [cache.features(layers, rows), cache.labels[rows]]
    return out


_CURRENT: dict = {}


def use_trainer(name: str) -> None:
    """Point NumpyMLP.fit (which imports features.heads.mlp's names when it runs) at a trainer."""
    import features.heads.mlp as current
    from bench import numpy_mlp

    _CURRENT.setdefault("sklearn", (current.MLPSettings, current.train_mlp))
    pair = ((numpy_mlp.MLPSettings, numpy_mlp.train_mlp) if name.startswith("numpy")
            else _CURRENT["sklearn"])
    current.MLPSettings, current.train_mlp = pair


def side_by_side(data, trainers, n_jobs: int) -> list[dict]:
    from features.heads.kinds import fit_head

    X, y, X_val, y_val, X_test, y_test = data
    rows = []
    for name in trainers:
        use_trainer(name)
        started = time.perf_counter()
        final, info = fit_head("mlp", X, y, X_val, y_val, folds=5, seed=0, n_jobs=n_jobs,
                               mlp_params={"dropout": TRAINERS[name]})
        seconds = time.perf_counter() - started
        test = float(np.mean(final.predict(X_test) == y_test))
        rows.append({"trainer": name, "cv_mean": info["cv_mean"], "cv_std": info["cv_std"],
                     "folds": info["folds"], "test": test, "seconds": seconds,
                     "epochs": info["epochs"], "best_epoch": info["best_epoch"]})
        print(f"{name:<13} cv {info['cv_mean']:.4f} +/- {info['cv_std']:.4f} ({info['folds']} "
              f"fold(s))  test {test:.4f}  {seconds:6.1f} s  final fit {info['epochs']} epochs "
              f"(best {info['best_epoch']})", flush=True)
    base = next((r for r in rows if r["trainer"] == "sklearn"), None)
    for r in rows:
        if base is not None and r is not base:
            print(f"{r['trainer']} vs sklearn: cv {r['cv_mean'] - base['cv_mean']:+.4f}, test "
                  f"{r['test'] - base['test']:+.4f}, seconds x{r['seconds'] / base['seconds']:.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("flowers", "scale"))
    parser.add_argument("--features", default="/tmp/heads_bench/flowers_avgmax5.h5")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--trainers", default="sklearn,numpy,numpy-nodrop")
    parser.add_argument("--n-jobs", type=int, default=-1)
    args = parser.parse_args()
    trainers = args.trainers.split(",")
    if args.what == "flowers":
        print(f"cache: {args.features}")
        side_by_side(load(args.features), trainers, args.n_jobs)
        return
    from bench.heads import synthetic_cache

    with tempfile.TemporaryDirectory() as work:
        path = synthetic_cache(os.path.join(work, "s.h5"), args.rows, args.dim, args.classes)
        data = load(path)
    print(f"synthetic: {args.rows:,} rows ({len(data[1]):,} train), {args.dim}-d, "
          f"{args.classes} classes")
    side_by_side(data, trainers, args.n_jobs)

if __name__ == "__main__":
    main()

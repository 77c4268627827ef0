"""`predict --model ENSEMBLE.joblib` on the test images of its caches, against the ensemble on
their cached features: argmax agreement, largest probability difference, images/s.

    python bench/ensemble.py ENSEMBLE.joblib [--limit N]

Runs bottleneck.predict.predictor.predict_paths (what `python cli.py predict` runs) on the files
of the test split recorded in the first member's cache.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bottleneck.predict.predictor import load_predictor, predict_paths
from features.cache.store import Cache
from features.ensembles.combination import load_ensemble


def cached(ensemble, limit):
    """{absolute path: ensemble probabilities from the cached features} of test images."""
    probas, paths = [], None
    for m in ensemble.members:
        with Cache(m.provenance.cache_path) as cache:
            rel = sorted(cache.paths[i] for i in np.flatnonzero(cache.split_mask("test")))[:limit]
            index = {p: i for i, p in enumerate(cache.paths)}
            rows = np.array([index[p] for p in rel])
            order = np.argsort(rows)
            X = np.empty((len(rows), cache.feature_dim(m.provenance.feature_layers)), np.float32)
            X[order] = cache.features(m.provenance.feature_layers, rows[order])
            probas.append(m.pipeline.predict_proba(X))
            paths = paths or [os.path.join(cache.provenance().data_dir, p) for p in rel]
    return dict(zip(paths, ensemble.predict_proba(probas)))


def main(path: str, limit: int) -> dict:
    ensemble = load_ensemble(path)
    want = cached(ensemble, limit)
    started = time.time()
    predictor = load_predictor(path)
    built = time.time()
    got = {p: proba for p, proba, _ in predict_paths(predictor, list(want))}
    done = time.time()
    diff = max(float(np.abs(got[p] - want[p]).max()) for p in want)
    agree = np.mean([np.argmax(got[p]) == np.argmax(want[p]) for p in want])
    return {"ensemble": path, "images": len(want), "networks": predictor.info["networks"],
            "argmax_agreement": float(agree), "max_abs_diff": diff,
            "build_seconds": round(built - started, 1),
            "images_per_second": round(len(want) / (done - built), 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ensemble")
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    args = parser.parse_args()
    print(json.dumps(main(args.ensemble, args.limit)))

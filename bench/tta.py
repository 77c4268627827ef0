"""`predict --tta N` on the test images of a cache: accuracy and time for N = 0, 4, 8.

    python bench/tta.py CACHE.h5 HEAD.joblib|MODEL.keras

Runs bottleneck.predictor.predict_paths (what `python cli.py predict --tta N` runs) on the files
of the cache's test split and scores the labels against their folders.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import numpy as np  # noqa: E402

from bottleneck.predict.predictor import load_predictor, predict_paths  # noqa: E402
from features.cache.store import Cache  # noqa: E402


def main(cache_path: str, head_path: str) -> dict:
    with Cache(cache_path) as cache:
        test = np.flatnonzero(cache.split_mask("test"))
        paths = [os.path.join(cache.provenance().data_dir, cache.paths[i]) for i in test]
        labels = cache.labels[test]
    predictor = load_predictor(head_path)
    out = {}
    for tta in (0, 4, 8):
        started = time.time()
        probs = np.stack([p for _, p, _ in predict_paths(predictor, paths, 32, tta=tta)])
        out[tta] = {"accuracy": float(np.mean(probs.argmax(1) == labels)),
                    "seconds": round(time.time() - started, 1)}
        print(tta, out[tta], flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))

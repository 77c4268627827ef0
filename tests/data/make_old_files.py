"""How the files in tests/data/ were made: a cache, three heads and an ensemble written by the
code of main at commit fa353a1 (before features/ was split into sub-packages), so that
tests/test_old_files.py can prove files written before a change keep loading after it.

    python tests/data/make_old_files.py          # from the project root; writes tests/data/old_*

It drives only the command line and reads the results with plain joblib and h5py (the file
formats), so it runs unchanged on any version; the committed files are the ones it wrote at
fa353a1. `old_expected.npz` holds each head's and the ensemble's probabilities on the cache's
rows as computed then: the test recomputes them with today's loaders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import joblib
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LAYERS = ("conv_pw_11_relu", "conv_pw_5_relu")   # 128-d and 64-d at alpha 0.25
# the shared ImageNet MobileNet 0.25 (../shared/ASSETS.md): random weights give features near
# 1e-15 at 32 px, on which every head predicts about uniform probabilities
WEIGHTS = os.path.join(os.path.dirname(ROOT), "shared", "weights",
                       "mobilenet_2_5_224_tf_no_top.h5")
HEADS = {"logistic": ("fit-logistic", LAYERS[0], []),
         "svm": ("fit-svm", LAYERS[1], []),
         "mlp": ("fit-mlp", "all", ["--hidden", "8"])}


def cli(*args) -> None:
    subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def make(work: str) -> dict:
    """Write the cache, heads and ensemble under `work`; returns {name: path}."""
    from bottleneck.data.synthetic import make_image_folder

    data = make_image_folder(os.path.join(work, "images"), n_per_class=6, size=32,
                             patterns=("stripes", "checks", "rings"))
    cache = os.path.join(work, "old_cache.h5")
    cli("extract", "--data", data, "--backbone", "mobilenet", "--alpha", "0.25", "--weights",
        WEIGHTS, "--image-size", "32", "--layer", LAYERS[0], "--layer", LAYERS[1], "--out", cache)
    out = {"cache": cache}
    for kind, (command, layer, extra) in HEADS.items():
        out[kind] = os.path.join(work, f"old_head_{kind}.joblib")
        cli(command, "--features", cache, "--layer", layer, "--cv", "2", "--n-jobs", "1",
            "--out", out[kind], *extra)
    out["ensemble"] = os.path.join(work, "old_ensemble.joblib")
    cli("ensemble", out["logistic"], out["svm"], "--cv", "2", "--out", out["ensemble"])
    return out


def member_features(cache, feature_layers) -> np.ndarray:
    return np.concatenate([cache[f"features/{name}"][:] for name in feature_layers], axis=1)


def expected(paths: dict) -> dict:
    """Each head's and the ensemble's probabilities on every row of the cache, read with plain
    joblib and h5py."""
    result = {}
    with h5py.File(paths["cache"], "r") as cache:
        for kind in HEADS:
            head = joblib.load(paths[kind])
            X = member_features(cache, head["provenance"]["feature_layers"])
            result[kind] = head["pipeline"].predict_proba(X)
        ensemble = joblib.load(paths["ensemble"])
        assert ensemble["combine"] == "mean"
        probas = [m["pipeline"].predict_proba(member_features(
            cache, m["provenance"]["feature_layers"])) for m in ensemble["members"]]
        weights = np.asarray(ensemble["weights"])
        result["ensemble"] = sum(w * p for w, p in zip(weights, probas)) / weights.sum()
    return result


def main() -> None:
    sys.path.insert(0, ROOT)
    with tempfile.TemporaryDirectory() as work:
        paths = make(work)
        np.savez(os.path.join(HERE, "old_expected.npz"), **expected(paths))
        for path in paths.values():
            shutil.copyfile(path, os.path.join(HERE, os.path.basename(path)))


if __name__ == "__main__":
    main()

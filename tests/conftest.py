"""Shared fixtures: tiny generated image folders, and the real assets in ../shared when present."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# extract --precision auto remembers its probe's decisions under $XDG_CACHE_HOME: never the
# user's own store in tests (subprocesses inherit this too)
os.environ["XDG_CACHE_HOME"] = os.path.join(
    __import__("tempfile").mkdtemp(prefix="bottleneck-test-cache-"))

from bottleneck.data.synthetic import make_image_folder  # noqa: E402


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


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A MobileNet alpha 0.25 random-init weights file, so two builds share exact weights."""
    from features.tf import keras

    keras.utils.set_random_seed(0)
    body = keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25,
                                        input_shape=(32, 32, 3))
    path = str(tmp_path_factory.mktemp("w") / "mobilenet_025.weights.h5")
    body.save_weights(path)
    return path


@pytest.fixture(scope="session")
def tiny_heads(tmp_path_factory, tiny_folder, tiny_weights):
    """Three logistic heads of the tiny folder (two layers at 32 px, one at 48 px) and their
    ensemble (tests.helpers.tiny_ensemble), made once for the suite: read them, never write."""
    from tests.helpers import tiny_ensemble

    return tiny_ensemble(tmp_path_factory.mktemp("ens_real"), tiny_folder, tiny_weights)

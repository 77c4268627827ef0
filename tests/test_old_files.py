"""Files written by an earlier version keep loading and give the same numbers.

tests/data/ holds a cache, three heads (logistic, svm, mlp) and an ensemble written by main at
fa353a1, before features/ was split into sub-packages (tests/data/make_old_files.py says how),
with the probabilities they gave then (old_expected.npz). Heads and ensembles pickle their
classes by module path, so these are the files a move of a module would break.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from features.ensemble import load_ensemble
from features.headfile import check_head_matches, load_head
from features.spec import apply_layer_spec, head_layer_spec
from features.store import Cache

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
KINDS = ("logistic", "svm", "mlp")


def old(name: str) -> str:
    return os.path.join(DATA, name)


@pytest.fixture(scope="module")
def expected():
    with np.load(old("old_expected.npz")) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture()
def cache(tmp_path):
    # a copy: nothing a test does may touch the committed file
    path = shutil.copyfile(old("old_cache.h5"), tmp_path / "old_cache.h5")
    with Cache(str(path)) as opened:
        yield opened


def test_old_cache_reads(cache):
    summary = cache.summary()
    assert summary["n_images"] == 18 and summary["split"] == {"train": 11, "val": 3, "test": 4}
    assert cache.class_names == ["checks", "rings", "stripes"]
    assert summary["features"] == {"conv_pw_11_relu": [128], "conv_pw_5_relu": [64]}
    assert cache.features(["conv_pw_11_relu", "conv_pw_5_relu"]).shape == (18, 192)
    assert cache.provenance().data_id.startswith("sha256:")


@pytest.mark.parametrize("kind", KINDS)
def test_old_head_predicts_as_it_did(kind, cache, expected):
    bundle = load_head(old(f"old_head_{kind}.joblib"))
    assert bundle["kind"] == kind
    check_head_matches(bundle, cache)   # still recognised as fitted on this cache
    X = cache.features(list(bundle["provenance"].feature_layers))
    np.testing.assert_allclose(bundle["pipeline"].predict_proba(X), expected[kind], atol=1e-7)


@pytest.mark.parametrize("kind", ("logistic", "svm", "mlp"))
def test_old_head_still_transplants_exactly(kind, cache, expected):
    bundle = load_head(old(f"old_head_{kind}.joblib"))
    X = cache.features(list(bundle["provenance"].feature_layers))
    spec = head_layer_spec(bundle["pipeline"])
    np.testing.assert_allclose(apply_layer_spec(spec, X), expected[kind], atol=1e-5)


def test_old_ensemble_predicts_as_it_did(cache, expected):
    ensemble = load_ensemble(old("old_ensemble.joblib"))
    assert [m.kind for m in ensemble.members] == ["logistic", "svm"]
    probas = [m.pipeline.predict_proba(cache.features(list(m.provenance.feature_layers)))
              for m in ensemble.members]
    np.testing.assert_allclose(ensemble.predict_proba(probas), expected["ensemble"], atol=1e-7)

"""Files written by an earlier version keep loading and give the same numbers.

tests/data/ holds a cache, three heads (logistic, svm, mlp) and an ensemble written by main at
fa353a1, before features/ was split into sub-packages (tests/data/make_old_files.py says how),
with the probabilities they gave then (old_expected.npz). Heads and ensembles pickle their
classes by module path, so these are the files a move of a module would break.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys

import joblib
import numpy as np
import pytest

from features.cache.store import Cache
from features.ensembles.combination import load_ensemble
from features.heads.headfile import check_head_matches, load_head, save_head
from features.heads.layer_spec import apply_layer_spec, head_layer_spec
from features.pickled import MOVED

from .helpers import ROOT

DATA = os.path.join(ROOT, "tests", "data")
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


def test_an_old_mlp_head_with_dropout_is_refused_a_refit_naming_the_fix(cache):
    from sklearn.base import clone

    from features.errors import UserError

    bundle = load_head(old("old_head_mlp.joblib"))
    assert bundle["pipeline"][-1].dropout == 0.5   # the numpy trainer's default then
    X = cache.features(list(bundle["provenance"].feature_layers))
    with pytest.raises(UserError, match="no dropout.*fit-mlp"):
        clone(bundle["pipeline"]).fit(X, cache.labels)


def test_old_ensemble_predicts_as_it_did(cache, expected):
    ensemble = load_ensemble(old("old_ensemble.joblib"))
    assert [m.kind for m in ensemble.members] == ["logistic", "svm"]
    probas = [m.pipeline.predict_proba(cache.features(list(m.provenance.feature_layers)))
              for m in ensemble.members]
    np.testing.assert_allclose(ensemble.predict_proba(probas), expected["ensemble"], atol=1e-7)


def test_old_files_load_as_todays_classes_and_resave_under_new_names(tmp_path):
    bundle = load_head(old("old_head_svm.joblib"))
    clf = bundle["pipeline"][-1]
    assert type(clf).__module__ == "features.heads.estimators"
    assert type(clf.solution_).__module__ == "features.heads.solvers"
    # outside a load the old names are gone: code importing them fails loudly
    assert not any(name in sys.modules for name in MOVED if name != "features.heads")
    again = save_head(str(tmp_path / "again.joblib"), bundle)
    plain = joblib.load(again)   # no aliases needed: written under today's module names
    assert type(plain["pipeline"][-1]) is type(clf)


def test_moved_table_names_real_modules_only():
    for old_name, new_name in MOVED.items():
        importlib.import_module(new_name)
        old_file = os.path.join(ROOT, *old_name.split(".")) + ".py"
        assert not os.path.exists(old_file), f"{old_name} still exists: drop it from MOVED"

"""fit-knn: the cosine kNN head predicts what scikit-learn's KNeighborsClassifier predicts, its CV
scores every k from one neighbour search per fold, and it is refused as a transplant."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from .helpers import blobs, run_cli, write_synthetic_cache


def test_cosine_knn_equals_sklearn_and_its_grid_pass_equals_separate_fits():
    from features.heads.knn import CosineKNN

    X, y = blobs(n_per_class=30, k=3, d=8, sep=1.0)
    fit, held = np.arange(0, 90, 1) % 3 != 0, np.arange(90) % 3 == 0
    models = [CosineKNN(n_neighbors=k) for k in (1, 3, 7)]
    grid = CosineKNN().grid_outputs(models, X[fit], y[fit], X[held])
    for k, out in zip((1, 3, 7), grid):
        ours = CosineKNN(n_neighbors=k).fit(X[fit], y[fit])
        stock = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
        stock.fit(X[fit], y[fit])
        np.testing.assert_array_equal(ours.predict(X[held]), stock.predict(X[held]))
        np.testing.assert_allclose(out, ours.predict_proba(X[held]))
        shares = stock.predict_proba(X[held])
        np.testing.assert_allclose(out, (shares * k + 0.1 / 3) / (k + 0.1))


def test_fit_knn_chooses_k_by_cv_and_is_not_transplantable(tmp_path):
    from features.errors import UserError
    from features.heads.headfile import load_head
    from features.heads.knn import K_GRID
    from features.heads.layer_spec import head_layer_spec

    X, y = blobs(n_per_class=40, k=3, d=8, sep=1.5)
    cache = write_synthetic_cache(tmp_path / "c.h5", {"a": X}, y, ["p", "q", "r"])
    done = run_cli("fit-knn", "--features", cache, "--out", tmp_path / "knn.joblib", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["best_params"]["clf__n_neighbors"] in K_GRID
    assert summary["test_accuracy"] > 0.8
    assert not next(r for r in summary["leaderboard"] if r["kind"] == "knn")["transplantable"]
    with pytest.raises(UserError, match="cannot be expressed"):
        head_layer_spec(load_head(str(tmp_path / "knn.joblib"))["pipeline"])

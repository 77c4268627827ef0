"""Stage 2's fast path gives the decisions of the plain one: the solvers reach scikit-learn's
optimum, the precomputed kernel equals libsvm's own, the one-pass search scores every candidate
like GridSearchCV, and the large-data shortcuts change memory, not results."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.preprocessing import StandardScaler

from features.heads import kinds as heads
from features.heads import search as search_module
from features.heads.estimators import LinearLogistic, TemperedKernelSVC, TemperedLinearSVC
from features.heads.search import FoldSet, fit_prefix, search
from features.heads.solvers import Preconditioner, _loss_and_grad_z, _targets
from tests.helpers import blobs, write_synthetic_cache


def _data(k=4, d=40, n=80, seed=0):
    X, y = blobs(n_per_class=n, k=k, d=d, sep=1.0, seed=seed)
    return StandardScaler().fit_transform(X).astype(np.float32), y


@pytest.mark.parametrize("k", [2, 4])
def test_linear_logistic_reaches_sklearns_optimum(k):
    from sklearn.linear_model import LogisticRegression

    X, y = _data(k=k)
    ours = LinearLogistic(C=0.05, tol=1e-8, max_iter=2000).fit(X, y)
    theirs = LogisticRegression(C=0.05, tol=1e-10, max_iter=5000).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=2e-4)


def _hinge_objective(model, X, y, C):
    """C * sum of squared hinges + |W|^2 / 2 (intercept free), as
    features/heads/solvers.py states."""
    classes = np.unique(y)
    z = np.atleast_2d(model.decision_function(X).T).T
    value, _ = _loss_and_grad_z(z, _targets(np.searchsorted(classes, y), len(classes), "hinge"),
                                np.ones(len(y)), "hinge")
    return C * value + 0.5 * float((np.asarray(model.coef_) ** 2).sum())


@pytest.mark.parametrize("k", [2, 4])
def test_linear_svm_objective_is_at_least_as_low_as_liblinears(k):
    from sklearn.svm import LinearSVC

    X, y = _data(k=k)
    C = 0.01
    ours = TemperedLinearSVC(C=C, tol=1e-8, max_iter=2000, temperature=1.0).fit(X, y)
    theirs = LinearSVC(C=C, max_iter=100_000, tol=1e-8, intercept_scaling=100).fit(X, y)
    assert _hinge_objective(ours, X, y, C) <= _hinge_objective(theirs, X, y, C) * (1 + 1e-4)
    assert np.mean(ours.predict(X) == theirs.predict(X)) > 0.97


def test_precomputed_kernel_svc_equals_libsvms_own_kernel():
    from sklearn.svm import SVC

    X, y = _data(k=3, d=20, n=40)
    ours = TemperedKernelSVC(C=3.0, temperature=1.0).fit(X, y)
    theirs = SVC(kernel="rbf", C=3.0, gamma="scale", decision_function_shape="ovr").fit(X, y)
    X_new = X[::3] + 0.1
    np.testing.assert_allclose(ours.decision_function(X_new), theirs.decision_function(X_new),
                               atol=1e-4)


@pytest.mark.parametrize("kind", ["svm-rbf", "logistic"])
def test_search_scores_every_candidate_like_gridsearchcv(kind):
    X, y = _data(k=3, d=30, n=50)
    cv = heads.cv_splitter(y, 4, 0)
    pipe = heads.make_pipeline(kind)
    grid = heads.param_grid(kind)
    found = search(pipe, grid, FoldSet(X, y, None, cv, n_jobs=2))
    plain = heads.clone_with(pipe, {"clf__temperature": 1.0} if kind != "logistic" else {})
    reference = GridSearchCV(plain, grid, cv=cv, scoring="accuracy").fit(X, y)
    means = [c["cv_mean"] for c in found.candidates]
    np.testing.assert_allclose(means, reference.cv_results_["mean_test_score"], atol=1e-9)
    assert found.best_params == reference.best_params_


def test_lean_preprocessing_of_large_data_equals_fit_transform(monkeypatch):
    monkeypatch.setattr(search_module, "HOLDOUT_ABOVE", 100)
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(20_000, 8)) * 5 + 3).astype(np.float32)
    expected = StandardScaler().fit_transform(X)
    pipe = heads.make_pipeline("logistic")
    out = fit_prefix(pipe[:-1], X.copy())
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_cv_is_one_stratified_holdout_above_the_threshold(monkeypatch):
    y = np.repeat(np.arange(3), 50)
    assert heads.cv_splitter(y, 5, 0).get_n_splits() == 5
    monkeypatch.setattr(search_module, "HOLDOUT_ABOVE", 100)
    splits = list(heads.cv_splitter(y, 5, 0).split(np.zeros((150, 1)), y))
    assert len(splits) == 1
    _, held = splits[0]
    assert len(held) == 30 and np.bincount(y[held]).tolist() == [10, 10, 10]


def test_preconditioner_changes_the_path_not_the_minimum():
    X, y = _data(k=3)
    plain = LinearLogistic(C=0.1, tol=1e-9, max_iter=3000).solve(X, y, Preconditioner(
        np.zeros((X.shape[1], 1)), np.zeros(1)))   # P = identity
    fast = LinearLogistic(C=0.1, tol=1e-9, max_iter=3000).fit(X, y)
    np.testing.assert_allclose(fast.coef_, plain.coef_, atol=1e-3)


def test_fit_skips_a_kernel_svm_on_many_rows_and_fit_svm_refuses_it(tmp_path, monkeypatch):
    from features.errors import UserError
    from features.heads.run import FitOptions, fit_best, fit_one

    monkeypatch.setattr(heads, "KERNEL_MAX_ROWS", 50)
    X, y = blobs(n_per_class=60, k=3, d=6, sep=3.0)
    cache = write_synthetic_cache(tmp_path / "c.h5", {"f": X}, y, ["a", "b", "c"])
    said = []
    summary = fit_best(FitOptions(features=cache, out=str(tmp_path / "h.joblib")),
                       ("logistic", "svm-rbf"), say=said.append)
    assert [row["head"] for row in summary["table"]] == ["logistic"]
    assert any(line.startswith("skipped: svm-rbf is not fitted on") for line in said)
    with pytest.raises(UserError, match="fit-svm \\(linear\\)"):
        fit_one("svm-rbf", FitOptions(features=cache, out=str(tmp_path / "k.joblib")),
                say=said.append)
    assert not (tmp_path / "k.joblib").exists()


def test_large_linear_heads_read_standardized_views_and_match_scaled_copies(monkeypatch):
    """Above the size threshold, linear heads never copy the scaled training rows; the views
    give the candidates' scores and the final head of the scaled copies."""
    from features.heads.solvers import Standardized

    monkeypatch.setattr(search_module, "HOLDOUT_ABOVE", 100)
    X, y = blobs(n_per_class=150, k=3, d=10, sep=1.0)
    X = X * 3 + 2
    pipe, grid = heads.make_pipeline("svm"), heads.param_grid("svm")
    cv = heads.cv_splitter(y, 5, 0)
    lean = FoldSet(X, y, None, cv)
    assert isinstance(lean.data(pipe[:-1], views=True)[0].X_fit, Standardized)
    with_views = search(pipe, grid, lean)
    final = heads.clone_with(pipe, {**with_views.best_params,
                                    "clf__temperature": with_views.temperature})
    heads._fit_pipeline(final, X, y, {})
    monkeypatch.setattr(search_module, "standard_only", lambda prefix: False)
    with_copies = search(pipe, grid, FoldSet(X, y, None, cv))
    np.testing.assert_allclose([c["cv_mean"] for c in with_views.candidates],
                               [c["cv_mean"] for c in with_copies.candidates], atol=1e-9)
    assert with_views.temperature == pytest.approx(with_copies.temperature, rel=1e-3)
    plain = heads.clone_with(pipe, {**with_views.best_params,
                                    "clf__temperature": with_views.temperature})
    heads._fit_pipeline(plain, X, y, {})
    np.testing.assert_allclose(final.predict_proba(X), plain.predict_proba(X), atol=1e-4)


@pytest.mark.parametrize("flag", [["--patience", "0"], ["--dropout", "0.5"], ["--hidden", "0"],
                                  ["--epochs", "-1"], ["--l2", "-1"]])
def test_mlp_flags_that_cannot_train_are_refused_in_one_line(flag, tmp_path):
    from tests.helpers import run_cli

    X, y = blobs(n_per_class=20, k=2, d=4)
    cache = write_synthetic_cache(tmp_path / "c.h5", {"f": X}, y, ["a", "b"])
    done = run_cli("fit-mlp", "--features", cache, "--out", tmp_path / "m.joblib", *flag)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].count("\n") == 0 and flag[0] in done.stderr
    assert not (tmp_path / "m.joblib").exists()

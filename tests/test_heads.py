"""Stage 2 heads on small synthetic caches (written directly, no network): fast."""

import json
import os
from dataclasses import replace

import joblib
import numpy as np
import pytest

from features.cache.split import assign_split
from features.cache.store import Cache
from features.errors import UserError
from features.heads.headfile import check_head_matches, load_head, make_bundle, save_head
from features.heads.kinds import _fit_mlp_pipeline, make_pipeline
from features.heads.layer_spec import apply_layer_spec, head_layer_spec
from features.heads.run import FitOptions, fit_best, fit_one

from .helpers import blobs, write_synthetic_cache


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    X, y = blobs()
    path = tmp_path_factory.mktemp("c") / "sep.h5"
    return write_synthetic_cache(path, {"a": X[:, :8], "b": X[:, 8:]}, y,
                                 ["w", "x", "y", "z"])


def quick(**kw):
    return FitOptions(folds=3, mlp={"max_epochs": 30, "patience": 5, "hidden": 32}, **kw)


# ------------------------------------------------------------------ layer spec == predict_proba

CASES = [(kind, k, scaling, pca) for kind in ("svm", "logistic", "sgd") for k in (2, 3)
         for scaling, pca in (("standard", None), ("standard", 5), ("l2+standard", 0.9),
                              ("l2", None), ("none", 4))]
CASES += [("mlp", 2, "standard", 5), ("mlp", 3, "l2+standard", None), ("mlp", 3, "none", 0.9)]


@pytest.mark.parametrize("kind,k,scaling,pca", CASES)
def test_layer_spec_reproduces_predict_proba(kind, k, scaling, pca):
    X, y = blobs(n_per_class=30, k=k, d=10, sep=1.0, seed=k)
    X = X * 7 + 3   # unscaled features
    pipe = make_pipeline(kind, scaling=scaling, pca=pca, seed=0)
    if kind == "mlp":
        pipe.set_params(clf__max_epochs=3, clf__hidden=16)
        _fit_mlp_pipeline(pipe, X, y, X[:10], y[:10])
    else:
        pipe.fit(X, y)
    spec = head_layer_spec(pipe)
    assert spec[-1]["op"] == "dense" and spec[-1]["activation"] == "softmax"
    assert spec[-1]["kernel"].shape[1] == max(2, k)
    assert all(op["kernel"].dtype == np.float32 for op in spec if op["op"] == "dense")
    ref = apply_layer_spec(spec, X)
    proba = pipe.predict_proba(X)
    assert proba.shape == (len(X), k)
    np.testing.assert_allclose(ref, proba, atol=1e-5)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-6)


def test_kernel_svm_is_not_expressible():
    X, y = blobs(n_per_class=20, k=3, d=5)
    pipe = make_pipeline("svm-rbf").fit(X, y)
    assert pipe.predict_proba(X).shape == (len(X), 3)
    assert np.mean(pipe.predict(X) == y) > 0.9
    with pytest.raises(UserError, match="--head-init random"):
        head_layer_spec(pipe)


def test_linear_svm_probabilities_are_tempered_softmax():
    X, y = blobs(n_per_class=30, k=3, d=6, sep=1.0)
    pipe = make_pipeline("svm").fit(X, y)
    clf = pipe.named_steps["clf"]
    assert clf.temperature_ > 0 and clf.temperature_ != 1.0
    z = clf.decision_function(pipe[:-1].transform(X))
    e = np.exp(clf.temperature_ * z - (clf.temperature_ * z).max(1, keepdims=True))
    np.testing.assert_allclose(pipe.predict_proba(X), e / e.sum(1, keepdims=True), atol=1e-12)


# ------------------------------------------------------------------ accuracy and honesty

@pytest.mark.parametrize("kind", ["logistic", "svm"])
def test_high_accuracy_on_separable_features(separable, tmp_path, kind):
    s = fit_one(kind, quick(features=separable, out=str(tmp_path / "h.joblib")), say=lambda *a: None)
    assert s["test_accuracy"] >= 0.95 and s["cv_score"] >= 0.95
    assert s["layer"] == "all" and s["feature_layers"] == ["a", "b"] and s["feature_dim"] == 12


def test_near_chance_on_shuffled_labels(tmp_path):
    rng = np.random.default_rng(1)
    X, y = blobs(n_per_class=60, k=4, d=12, sep=0.0)
    path = write_synthetic_cache(tmp_path / "noise.h5", {"a": rng.normal(size=X.shape)},
                                 rng.permutation(y), ["w", "x", "y", "z"])
    s = fit_one("logistic", quick(features=path, out=str(tmp_path / "h.joblib")), say=lambda *a: None)
    assert s["test_accuracy"] < 0.45 and s["cv_score"] < 0.45


def test_test_split_never_seen_by_cv(tmp_path):
    """Poisoning the test labels changes neither the chosen C nor the CV scores (nor the model)."""
    X, y = blobs(n_per_class=50, k=3, d=10, sep=1.0, seed=3)
    split = assign_split(y, test_size=0.25, val_size=0.15, seed=0)
    poisoned = y.copy()
    test = split == 2
    poisoned[test] = (poisoned[test] + 1) % 3
    results = []
    for name, labels in (("clean", y), ("poisoned", poisoned)):
        path = write_synthetic_cache(tmp_path / f"{name}.h5", {"a": X}, labels, ["p", "q", "r"],
                                     split=split)
        s = fit_one("svm", quick(features=path, out=str(tmp_path / f"{name}.joblib")),
                    say=lambda *a: None)
        results.append((s, load_head(str(tmp_path / f"{name}.joblib"))))
    (clean, hc), (bad, hb) = results
    assert clean["best_params"] == bad["best_params"]
    assert hc["scores"]["cv"]["scores"] == hb["scores"]["cv"]["scores"]
    assert hc["scores"]["cv"]["candidates"] == hb["scores"]["cv"]["candidates"]
    np.testing.assert_array_equal(hc["pipeline"].named_steps["clf"].coef_,
                                  hb["pipeline"].named_steps["clf"].coef_)
    assert clean["test_accuracy"] > 0.8 > bad["test_accuracy"]


def test_mlp_head_is_numpy_and_early_stopped(separable, tmp_path):
    s = fit_one("mlp", quick(features=separable, out=str(tmp_path / "m.joblib")),
                say=lambda *a: None)
    assert s["test_accuracy"] >= 0.9
    bundle = load_head(str(tmp_path / "m.joblib"))
    clf = bundle["pipeline"].named_steps["clf"]
    assert [w.shape for w in clf.weights_] == [(12, 32), (32,), (32, 4), (4,)]
    assert all(isinstance(w, np.ndarray) for w in clf.weights_)
    assert "val" in bundle["scores"]["refit_on"]


@pytest.mark.parametrize("k", [2, 4])
def test_mlp_keeps_the_best_epoch_of_scikit_learns_mlp(k):
    """The MLP head is MLPClassifier's model at its best val-loss epoch (binary: logits [0, z])."""
    from sklearn.metrics import log_loss

    from features.heads.estimators import softmax
    from features.heads.mlp import MLPSettings, classifier, forward, train_mlp

    X, y = blobs(n_per_class=40, k=k, d=10, sep=0.4, seed=k)   # overlapping: val loss turns up
    fit, val = slice(0, 30 * k), slice(30 * k, None)
    settings = MLPSettings(hidden=32, max_epochs=200, patience=3)
    result = train_mlp(X[fit], y[fit], X[val], y[val], k, settings, seed=0)
    assert result.best_epoch < result.n_epochs   # it stopped early: the best epoch is not the last
    replay, losses = classifier(settings, 30 * k, seed=0), []
    for epoch in range(1, result.n_epochs + 1):
        replay.partial_fit(X[fit], y[fit], classes=np.arange(k))
        losses.append(log_loss(y[val], replay.predict_proba(X[val]), labels=np.arange(k)))
        if epoch == result.best_epoch:
            best = replay.predict_proba(X)
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.n_epochs == min(settings.max_epochs, result.best_epoch + settings.patience)
    np.testing.assert_allclose(softmax(forward(result.weights, X)), best, atol=1e-5)


def test_out_of_core_route(separable, tmp_path):
    said = []
    s = fit_one("svm", quick(features=separable, out=str(tmp_path / "o.joblib"),
                             route="out-of-core"), say=said.append)
    assert s["route"] == "out-of-core" and s["head"] == "sgd"
    assert s["test_accuracy"] >= 0.9
    assert any("out-of-core" in line for line in said)
    bundle = load_head(str(tmp_path / "o.joblib"))
    with Cache(separable) as cache:
        X = cache.features(["a", "b"], np.arange(len(cache)))
    np.testing.assert_allclose(apply_layer_spec(head_layer_spec(bundle["pipeline"]), X),
                               bundle["pipeline"].predict_proba(X), atol=1e-5)


def test_auto_route_goes_out_of_core_over_budget(separable, tmp_path):
    s = fit_one("logistic", quick(features=separable, out=str(tmp_path / "o.joblib"),
                                  max_memory_mb=1e-6), say=lambda *a: None)
    assert s["route"] == "out-of-core"
    with pytest.raises(UserError, match="memory budget"):
        fit_one("mlp", quick(features=separable, out=str(tmp_path / "m.joblib"),
                             max_memory_mb=1e-6), say=lambda *a: None)


# ------------------------------------------------------------------ fit (all heads) + CLI + report

def test_fit_cli_json_ranks_heads_and_writes_report(separable, tmp_path, capsys):
    from bottleneck.cli import main

    out, report = tmp_path / "best.joblib", tmp_path / "rep"
    rc = main(["fit", "--features", separable, "--heads", "logistic,svm,svm-rbf", "--cv", "3",
               "--out", str(out), "--report", str(report), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert {"test_accuracy", "cv_score", "head", "table"} <= set(result)
    table = result["table"]
    assert [r["head"] for r in table] and sorted(r["head"] for r in table) == ["logistic", "svm",
                                                                              "svm-rbf"]
    assert [r["cv_score"] for r in table] == sorted((r["cv_score"] for r in table), reverse=True)
    assert result["head"] == table[0]["head"]
    bundle = load_head(str(out))
    assert bundle["kind"] == result["head"]
    # the report holds the right numbers
    metrics = json.loads((report / "metrics.json").read_text())
    with Cache(separable) as cache:
        test = cache.split_mask("test")
        X = cache.features(bundle["provenance"].feature_layers, test)
        y = cache.labels[test]
    pred = bundle["pipeline"].predict(X)
    assert metrics["accuracy"] == pytest.approx(float(np.mean(pred == y)))
    assert metrics["accuracy"] == pytest.approx(result["test_accuracy"])
    assert metrics["cv"]["mean"] == pytest.approx(result["cv_score"])
    assert set(metrics["per_class"]) == {"w", "x", "y", "z"}
    assert sum(v["support"] for v in metrics["per_class"].values()) == len(y)
    assert {"balanced_accuracy", "macro_f1", "top_k"} <= set(metrics)
    assert "w" in (report / "classification_report.txt").read_text()
    assert (report / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ head files and refusals

def test_head_file_roundtrip_and_refusals(separable, tmp_path):
    X, y = blobs(n_per_class=10, k=4, d=12)
    pipe = make_pipeline("logistic").fit(X, y)
    with Cache(separable) as cache:
        bundle = make_bundle("logistic", pipe, cache.provenance(), "all", ["a", "b"], {"cv": {}})
        prov = cache.provenance()
        check_head_matches(bundle, cache)
    path = save_head(str(tmp_path / "h.joblib"), bundle)
    loaded = load_head(path)
    assert {"format", "format_version", "kind", "pipeline", "provenance", "scores",
            "created"} <= set(loaded)
    assert loaded["format"] == "bottleneck-head" and loaded["format_version"] == 1
    assert loaded["provenance"].feature_layers == ("a", "b")
    assert loaded["provenance"].layer == "all"
    with pytest.raises(UserError, match=r"backbone.*image_size|image_size.*backbone"):
        check_head_matches(loaded, replace(prov, backbone="vgg16", image_size=224))
    with pytest.raises(UserError, match="class_names"):
        check_head_matches(loaded, replace(prov, class_names=("a", "b", "c", "d")))
    joblib.dump([1, 2, 3], tmp_path / "list.joblib")
    joblib.dump({"pipeline": pipe}, tmp_path / "dict.joblib")
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    for name in ("list", "dict", "junk"):
        with pytest.raises(UserError, match="not a"):
            load_head(str(tmp_path / f"{name}.joblib"))
    with pytest.raises(UserError, match="no head file"):
        load_head(str(tmp_path / "missing.joblib"))


def test_bad_inputs_are_user_errors(separable, tmp_path):
    with pytest.raises(UserError, match="no feature cache|no such file"):
        fit_one("logistic", quick(features=str(tmp_path / "missing.h5")), say=lambda *a: None)
    with pytest.raises(UserError, match="holds: a, b"):
        fit_one("logistic", quick(features=separable, layer="nope"), say=lambda *a: None)
    one = write_synthetic_cache(tmp_path / "one.h5", {"a": np.ones((9, 3))}, np.zeros(9), ["only"],
                                split=np.zeros(9, np.uint8))
    with pytest.raises(UserError, match="at least two"):
        fit_one("logistic", quick(features=one), say=lambda *a: None)


def test_single_layer_choice(separable, tmp_path):
    s = fit_best(quick(features=separable, layer="b", out=str(tmp_path / "b.joblib")),
                 kinds=("logistic",), say=lambda *a: None)
    assert s["feature_layers"] == ["b"] and s["feature_dim"] == 4
    assert load_head(str(tmp_path / "b.joblib"))["provenance"].layer == "b"


def test_kernel_winner_also_saves_best_transplantable_head(tmp_path):
    """Concentric classes: an RBF SVM wins by CV; fit keeps the best linear head for finetune."""
    rng = np.random.default_rng(0)
    n = 80
    radius = np.r_[rng.uniform(0, 1, n), rng.uniform(2, 3, n)]
    angle = rng.uniform(0, 2 * np.pi, 2 * n)
    X = np.c_[radius * np.cos(angle), radius * np.sin(angle)].astype(np.float32)
    y = np.repeat([0, 1], n)
    path = write_synthetic_cache(tmp_path / "rings.h5", {"a": X}, y, ["inner", "outer"])
    out = str(tmp_path / "winner.joblib")
    summary = fit_best(quick(features=path, out=out), ("svm-rbf", "logistic"),
                       say=lambda *a: None)
    assert summary["head"] == "svm-rbf"
    extra = summary["transplantable"]
    assert extra["head"] == "logistic" and extra["path"].endswith("winner-transplantable.joblib")
    bundle = load_head(extra["path"])
    assert bundle["kind"] == "logistic" and bundle["scores"]["test"] is None
    head_layer_spec(bundle["pipeline"])   # expressible as network layers


@pytest.mark.parametrize("case", ["out_is_a_folder", "out_under_a_file", "report_is_a_file"])
def test_unwritable_outputs_are_refused_before_fitting(separable, tmp_path, case):
    """fit used to fit for minutes, then lose the head to an IsADirectoryError (leaving .tmp)."""
    (tmp_path / "plain").write_text("x")
    out, report = {"out_is_a_folder": (tmp_path, None),
                   "out_under_a_file": (tmp_path / "plain" / "h.joblib", None),
                   "report_is_a_file": (tmp_path / "h.joblib", tmp_path / "plain")}[case]
    said = []
    with pytest.raises(UserError, match="folder|file"):
        fit_one("logistic", quick(features=separable, out=str(out),
                                  report=None if report is None else str(report)), said.append)
    assert not any(line.startswith("features:") for line in said)   # refused before the work
    assert sorted(os.listdir(tmp_path)) == ["plain"]


def test_a_stale_temporary_of_a_killed_dump_is_cleaned_by_the_next_save(separable, tmp_path):
    stale = tmp_path / ".best.tmp.joblib"   # what a killed dump leaves
    stale.write_bytes(b"half a pickle")
    fit_one("logistic", quick(features=separable, out=str(tmp_path / "best.joblib")),
            lambda *a: None)
    # best.joblib is the leaderboard's: the head itself is saved as logistic.joblib beside it
    assert sorted(os.listdir(tmp_path)) == ["best.joblib", "leaderboard.json", "logistic.joblib"]


def test_a_head_from_another_cache_of_the_same_photos_is_refused(tmp_path):
    """A head fitted on a 60-image cache passed every check on a 30-image cache of the same
    photos with the same settings, whose test images it had trained on."""
    X, y = blobs(n_per_class=15, k=4, d=6)
    names = ["w", "x", "y", "z"]
    big = write_synthetic_cache(tmp_path / "big.h5", {"a": X}, y, names)
    small = write_synthetic_cache(tmp_path / "small.h5", {"a": X[:30]}, y[:30], names)
    fit_one("logistic", quick(features=big, out=str(tmp_path / "h.joblib")),
            lambda *a: None)
    head = load_head(str(tmp_path / "h.joblib"))
    with Cache(big) as cache:
        check_head_matches(head, cache)   # its own cache: accepted
    with Cache(small) as cache, pytest.raises(UserError, match="data_id.*refit it on this cache"):
        check_head_matches(head, cache)


def test_fit_on_a_cache_with_an_empty_class_names_the_folder_not_the_seed(tmp_path):
    X, y = blobs(n_per_class=12, k=3, d=6)
    path = write_synthetic_cache(tmp_path / "c.h5", {"a": X}, y, ["p", "q", "r", "empty"])
    with pytest.raises(UserError, match="no images of empty at all .*remove the folder"):
        fit_one("logistic", quick(features=path, out=str(tmp_path / "h.joblib")), lambda *a: None)

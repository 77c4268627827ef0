"""extract --views K: seeded augmented views stored beside the plain view."""

import numpy as np
import pytest

from bottleneck.data.augment import augmented_views
from features.cache.store import Cache
from features.tf import tf

from .helpers import extract


def test_views_are_seeded_and_differ():
    rng = np.random.default_rng(0)
    image = tf.constant((rng.random((40, 56, 3)) * 255).astype(np.uint8))
    a = augmented_views(image, 7, 0, 4, 32).numpy()
    b = augmented_views(image, 7, 0, 4, 32).numpy()
    c = augmented_views(image, 7, 1, 4, 32).numpy()
    d = augmented_views(image, 8, 0, 4, 32).numpy()
    assert a.shape == (4, 32, 32, 3) and a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)              # same seed, same image: same views
    assert not np.allclose(a, c) and not np.allclose(a, d)
    for i in range(4):                                # views differ from each other
        for j in range(i + 1, 4):
            assert np.abs(a[i] - a[j]).mean() > 1.0


def test_views_in_cache(tiny_folder, tmp_path):
    plain = extract(tiny_folder, tmp_path / "plain.h5")
    viewed = extract(tiny_folder, tmp_path / "views.h5", views=3, batch_size=5)
    again = extract(tiny_folder, tmp_path / "again.h5", views=3, batch_size=7)
    assert viewed["views"] == 3
    with Cache(plain["path"]) as p, Cache(viewed["path"]) as v, Cache(again["path"]) as a:
        layer = p.layers[0]
        assert v.n_views == 3 and p.n_views == 0
        # the plain view equals the cache made without views
        np.testing.assert_allclose(v.features(layer), p.features(layer), rtol=1e-5, atol=1e-7)
        views = v.views(layer)
        assert views.shape == (24, 3, 256)
        # deterministic whatever the batching
        np.testing.assert_allclose(views, a.views(layer), rtol=1e-5, atol=1e-7)
        # views differ from the plain view and from each other
        scale = np.abs(views).max()
        assert np.abs(views[:, 0] - v.features(layer)).max() > 1e-3 * scale
        assert np.abs(views[:, 0] - views[:, 1]).max() > 1e-3 * scale
        rows = v.split_mask("test")
        assert v.views(layer, rows).shape == (rows.sum(), 3, 256)
        assert p.views(layer, rows).shape == (rows.sum(), 0, 256)


def test_views_change_the_cache_identity(tiny_folder, tmp_path):
    from features.errors import UserError

    extract(tiny_folder, tmp_path / "f.h5")
    with pytest.raises(UserError, match="views"):
        extract(tiny_folder, tmp_path / "f.h5", views=2)


# ------------------------------------------------------------------ heads on augmented views

def write_view_cache(path, X, V, y, split):
    """A cache with plain features X (n, d) and views V (n, K, d), written through the store."""
    from features.cache.provenance import Provenance
    from features.cache.store import write_cache

    prov = Provenance(data_dir="/nowhere", backbone="mobilenet", alpha=0.25, weights="none",
                      image_size=32, pool="avg", layers=("a",), layer_indices=(1,),
                      preprocess="mobilenet", precision="float32", seed=0, test_size=0.25,
                      val_size=0.0, views=V.shape[1], class_names=("p", "q", "r"))
    write_cache(str(path), prov, paths=[f"img{i}.png" for i in range(len(y))], labels=y, split=split,
                shards=[(0, {"features/a": X, "views/a": V})],
                datasets={"features/a": X.shape[1:], "views/a": V.shape[1:]}, skipped=[],
                created="now")
    return str(path)


def view_data(n_per_class=30, k=3, d=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class).astype(np.int32)
    centres = rng.normal(size=(3, d)) * 2.5
    X = (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32)
    V = (X[:, None] + rng.normal(scale=0.5, size=(len(y), k, d))).astype(np.float32)
    from features.cache.split import assign_split
    return X, V, y, assign_split(y, test_size=0.25, val_size=0.0, seed=0)


def test_grouped_cv_keeps_views_of_an_image_together():
    from features.heads.kinds import cv_splitter

    groups = np.repeat(np.arange(15), 4)           # 15 images x 4 views each
    y = np.repeat(np.arange(3), 5)[groups]         # 5 images per class
    cv = cv_splitter(y, 5, 0, groups)
    seen = {}
    for fold, (_, held) in enumerate(cv.split(np.zeros((len(y), 1)), y, groups)):
        for g in np.unique(groups[held]):
            assert g not in seen, "an image's views were spread over two folds"
            seen[g] = fold
            assert set(np.flatnonzero(groups == g)) <= set(held)
    assert len(seen) == 15


def test_heads_train_on_views_and_never_touch_test_views(tmp_path):
    from features.heads.run import FitOptions, fit_one

    X, V, y, split = view_data()
    V[split == 2] = np.nan            # poison the test images' views: any use would crash
    path = write_view_cache(tmp_path / "v.h5", X, V, y, split)
    summary = fit_one("logistic", FitOptions(features=path, out=str(tmp_path / "h.joblib"),
                                             folds=3), say=lambda *a: None)
    assert summary["views"] == 3 and summary["grouped_cv"]
    assert summary["test_accuracy"] > 0.8
    plain = fit_one("logistic", FitOptions(features=path, out=str(tmp_path / "p.joblib"),
                                           folds=3, views=False), say=lambda *a: None)
    assert plain["views"] == 0 and not plain["grouped_cv"]


def test_tta_averages_views(tmp_path):
    from features.heads.headfile import load_head
    from features.heads.run import FitOptions, fit_one

    X, V, y, split = view_data(seed=1)
    path = write_view_cache(tmp_path / "v.h5", X, V, y, split)
    out = str(tmp_path / "h.joblib")
    tta = fit_one("logistic", FitOptions(features=path, out=out, folds=3, tta=True),
                  say=lambda *a: None)
    pipe = load_head(out)["pipeline"]
    test = split == 2
    proba = (pipe.predict_proba(X[test]) + sum(pipe.predict_proba(V[test][:, k])
                                               for k in range(3))) / 4
    assert tta["tta"]
    assert tta["test_accuracy"] == pytest.approx(float(np.mean(proba.argmax(1) == y[test])))


def test_held_out_rows_of_heads_are_whole_images_on_views():
    """The SVM/SGD temperature and the MLP's early-stopping holdout hold out whole images when
    rows are views: on labels no model can learn, views seen in training would make held-out
    views look predictable (an overconfident temperature); grouped, they cannot."""
    from sklearn.svm import LinearSVC

    from features.heads.estimators import NumpyMLP, cv_temperature
    from features.heads.kinds import _fit_params, make_pipeline

    rng = np.random.default_rng(0)
    n, k, d = 80, 4, 120
    images = rng.normal(size=(n, d))
    y_img = rng.integers(0, 2, n)                      # random: nothing to learn across images
    X = np.repeat(images, k, axis=0) + 0.01 * rng.normal(size=(n * k, d))
    y, groups = np.repeat(y_img, k), np.repeat(np.arange(n), k)
    classes = np.unique(y)
    make = lambda: LinearSVC(C=10.0, max_iter=20000)  # noqa: E731
    ungrouped = cv_temperature(make, X, y, classes, 3, 0)
    grouped = cv_temperature(make, X, y, classes, 3, 0, groups)
    assert grouped < ungrouped / 3, (grouped, ungrouped)

    held = NumpyMLP(random_state=0)._holdout(np.searchsorted(classes, y), groups)
    assert set(groups[held]).isdisjoint(np.delete(groups, held))   # whole images out
    assert 0.05 < len(held) / len(y) < 0.2

    assert "clf__groups" in _fit_params(make_pipeline("svm"), groups)
    assert _fit_params(make_pipeline("logistic"), groups) == {}   # no internal holdout
    assert _fit_params(make_pipeline("svm"), None) == {}

"""extract --views K: seeded augmented views stored beside the plain view."""

import numpy as np
import pytest
import tensorflow as tf

from bottleneck.images import augmented_views
from features.store import Cache

from .test_extract import extract


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
        views = v.view_features(layer)
        assert views.shape == (24, 3, 256)
        # deterministic whatever the batching
        np.testing.assert_allclose(views, a.view_features(layer), rtol=1e-5, atol=1e-7)
        # views differ from the plain view and from each other
        scale = np.abs(views).max()
        assert np.abs(views[:, 0] - v.features(layer)).max() > 1e-3 * scale
        assert np.abs(views[:, 0] - views[:, 1]).max() > 1e-3 * scale
        rows = v.split_mask("test")
        assert v.view_features(layer, rows).shape == (rows.sum(), 3, 256)
        assert p.view_features(layer, rows).shape == (rows.sum(), 0, 256)


def test_views_change_the_cache_identity(tiny_folder, tmp_path):
    from bottleneck.errors import UserError

    extract(tiny_folder, tmp_path / "f.h5")
    with pytest.raises(UserError, match="views"):
        extract(tiny_folder, tmp_path / "f.h5", views=2)

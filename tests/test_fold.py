"""Folding BatchNorm into convolutions changes speed, not results."""

import numpy as np
import pytest

from bottleneck.backbones.fold import fold_batchnorm
from features.tf import keras


@pytest.mark.parametrize("ctor,kwargs,expect_folded", [
    ("MobileNet", {"alpha": 0.25}, 27), ("MobileNetV2", {"alpha": 0.35}, 52),
    ("ResNet50", {}, 53), ("EfficientNetB0", {}, 49), ("DenseNet121", {}, 59),
])
def test_folded_body_equals_original(ctor, kwargs, expect_folded):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    body = getattr(keras.applications, ctor)(include_top=False, weights=None,
                                             input_shape=(64, 64, 3), **kwargs)
    for layer in body.layers:   # non-trivial statistics, so folding is really exercised
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
    folded = fold_batchnorm(body)
    assert sum(type(l).__name__ == "_Folded" for l in folded.layers) == expect_folded
    assert [l.name for l in folded.layers][1:] == [l.name for l in body.layers][1:]
    x = rng.uniform(-1, 1, (3, 64, 64, 3)).astype("float32")
    want, got = body(x, training=False).numpy(), folded(x, training=False).numpy()
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got / np.abs(want).max(), want / np.abs(want).max(), atol=1e-5)

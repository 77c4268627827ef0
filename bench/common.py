"""Helpers for the benchmarks: the machine's measured matmul peak, model FLOPs, peak RSS."""

from __future__ import annotations

import resource
import time

import numpy as np


def matmul_peak(dtype="float32", n=2048, seconds=3.0) -> float:
    """Best sustained FLOP/s of an n x n matmul in `dtype` on this machine, measured now."""
    from features.tf import tf
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    mm = tf.function(lambda x, y: tf.matmul(x, y))
    mm(a, b).numpy()
    best, end = 0.0, time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        mm(a, b).numpy()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def model_flops(model) -> float:
    """Multiply-add FLOPs (x2) of one image through `model`'s conv, depthwise and dense layers."""
    from features.tf import keras
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_flops(layer)
            continue
        out = getattr(layer, "output", None)
        if out is None or not hasattr(layer, "kernel"):
            continue
        shape = out.shape
        spatial = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, cin, mult = layer.kernel.shape
            total += 2 * spatial * kh * kw * cin * mult
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            total += 2 * spatial * int(np.prod(layer.kernel.shape))
    return total


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

"""A predictor's input, built the one way predict and serve both use: encoded bytes (or a file)
-> one image per size the predictor reads -> stacked batches for `predict_images`."""

from __future__ import annotations

import numpy as np

from bottleneck.predict.base import Predictor


def image_input(predictor: Predictor, data: bytes):
    """(one image's input: [float32 (S, S, 3) per input size], None), or (None, reason)."""
    from bottleneck.data.images import image_from_bytes

    return image_from_bytes(data, predictor.input_sizes)


def file_input(predictor: Predictor, path: str):
    """image_input of a file: (input, None), or (None, reason) when it cannot be read."""
    from bottleneck.data.images import read_image_file

    data, reason = read_image_file(path)
    return (None, reason) if data is None else image_input(predictor, data)


def stack_inputs(predictor: Predictor, inputs: list):
    """What predict_images takes for these images' inputs: one (n, S, S, 3) array, or
    {size: array} for a predictor reading several sizes."""
    sizes = predictor.input_sizes
    stacked = [np.stack([one[j] for one in inputs]) if inputs
               else np.zeros((0, size, size, 3), np.float32) for j, size in enumerate(sizes)]
    return dict(zip(sizes, stacked)) if predictor.image_sizes else stacked[0]


def load_inputs(predictor: Predictor, paths: list):
    """(batch input, ok indices, [(index, reason)]) of a chunk of files."""
    inputs, ok, bad = [], [], []
    for i, path in enumerate(paths):
        one, reason = file_input(predictor, path)
        if one is None:
            bad.append((i, reason))
        else:
            inputs.append(one)
            ok.append(i)
    return stack_inputs(predictor, inputs), ok, bad

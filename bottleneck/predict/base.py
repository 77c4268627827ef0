"""What every predictor is: the Predictor record and the features a head reads from a network's
outputs (shared by predictor.py and ensemble.py, which must not import each other)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Predictor:
    kind: str                                   # 'head' or 'keras'
    path: str
    class_names: list[str]
    image_size: int
    predict_images: Callable[[np.ndarray], np.ndarray]   # float32 (n, s, s, 3) in [0,255] -> (n, k)
    info: dict
    # several input sizes (an ensemble): predict_images then takes {size: images at that size}
    image_sizes: tuple[int, ...] = ()

    @property
    def input_sizes(self) -> tuple[int, ...]:
        """Every image size the predictor reads, in the order its inputs are built."""
        return self.image_sizes or (self.image_size,)


def head_features(outputs, prov) -> np.ndarray:
    """Flattened, concatenated features of a head's feature_layers from the network's outputs
    (one per tap, in prov.layers order)."""
    taps = list(prov.layers)
    parts = []
    for layer in prov.taps:
        out = np.asarray(outputs[taps.index(layer)])
        parts.append(out.reshape(len(out), -1))
    return np.concatenate(parts, axis=1)


def top_classes(proba, names, k: int) -> list:
    """The k most probable [class, probability] pairs (rounded to 6 places), ties in class
    order: the rows predict prints and serve answers."""
    order = np.argsort(-proba, kind="stable")[:k]
    return [[names[i], round(float(proba[i]), 6)] for i in order]

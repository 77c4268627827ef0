"""The cosine space of the audit: how cached features are compared.

Pooled CNN features are power-normalised (signed square root), centred on the cache's mean and
scaled to unit length, as image retrieval does with pooled descriptors: the square root keeps a
few large activations from deciding every similarity, and centring removes the direction all
images share (raw ReLU features of any two photos have a cosine near 0.9). The dot product of
two rows is then their cosine similarity. Measured on flowers5 (BENCHMARKS.md, "Audit").
"""

from __future__ import annotations

import numpy as np

SPACE = "signed-sqrt, centred, l2"   # recorded in an index, so a change of recipe rebuilds it


def power(X) -> np.ndarray:
    """Signed square root of float32 features (rows)."""
    X = np.asarray(X, np.float32)
    return np.sign(X) * np.sqrt(np.abs(X))


def centre_of(X) -> np.ndarray:
    """The mean of the power-normalised rows: the centre every row and query is moved by."""
    return power(X).mean(axis=0, dtype=np.float64).astype(np.float32)


def to_space(X, centre) -> np.ndarray:
    """Rows in the cosine space: power-normalised, centred on `centre`, unit length (a row
    equal to the centre stays zero)."""
    Z = power(X) - np.asarray(centre, np.float32)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return np.ascontiguousarray(Z / np.maximum(norms, 1e-12), np.float32)

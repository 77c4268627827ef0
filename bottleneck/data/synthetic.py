"""Small labelled image sets drawn on the fly: for the demo and for tests (no downloads)."""

from __future__ import annotations

import os

import numpy as np

PATTERNS = ("stripes", "checks", "rings", "dots")


def draw(pattern: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB image of `pattern` with random colours, frequency, phase and noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq = rng.uniform(3, 7)
    phase = rng.uniform(0, 2 * np.pi)
    if pattern == "stripes":
        angle = rng.uniform(-0.3, 0.3)
        mask = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase) > 0
    elif pattern == "checks":
        mask = (np.sin(2 * np.pi * freq * x + phase) * np.sin(2 * np.pi * freq * y + phase)) > 0
    elif pattern == "rings":
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        mask = np.sin(2 * np.pi * freq * np.hypot(x - cx, y - cy) + phase) > 0
    elif pattern == "dots":
        mask = np.zeros((size, size), bool)
        for cx, cy in rng.uniform(0, 1, size=(int(freq * 3), 2)):
            mask |= np.hypot(x - cx, y - cy) < rng.uniform(0.04, 0.09)
    else:
        raise ValueError(pattern)
    fg, bg = rng.uniform(0, 255, size=(2, 3))
    image = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_image_folder(root: str, *, n_per_class: int = 20, size: int = 64,
                      patterns=PATTERNS, seed: int = 0, ext: str = ".png") -> str:
    """Write root/<pattern>/<i>.<ext> images; returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for pattern in patterns:
        os.makedirs(os.path.join(root, pattern), exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(draw(pattern, size, rng)).save(
                os.path.join(root, pattern, f"{pattern}_{i:03d}{ext}"))
    return root

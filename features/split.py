"""The one place a train/val/test assignment is made; everything later reads it from the cache."""

from __future__ import annotations

import numpy as np

from features.errors import UserError

SPLIT_NAMES = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2


def assign_split(labels, *, test_size: float, val_size: float, seed: int) -> np.ndarray:
    """Stratified, seeded split codes (0 train, 1 val, 2 test) for items in their listed order.

    The test part is drawn first, exactly as `train_test_split(range(N), test_size=..., stratify=labels,
    random_state=seed)` draws it, so the test images do not depend on `val_size`. `val_size` is a
    fraction of all images, carved from the rest with the same seed.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n = len(labels)
    for name, value in (("--test-size", test_size), ("--val-size", val_size)):
        if not 0 <= value < 1:
            raise UserError(f"{name} {value} must be a fraction in [0, 1)")
    if test_size + val_size >= 1:
        raise UserError("--test-size plus --val-size must leave some training images (sum < 1)")
    codes = np.full(n, TRAIN, dtype=np.uint8)
    index = np.arange(n)
    counts = np.bincount(labels) if n else np.array([])
    if (test_size or val_size) and n and counts[counts > 0].min() < 3:
        small = int(np.flatnonzero((counts > 0) & (counts < 3))[0])
        raise UserError(f"class #{small} has {counts[small]} image(s); a stratified split needs at "
                        "least 3 per class: add images, or pass --test-size 0 --val-size 0")
    n_classes = int((counts > 0).sum()) if n else 0

    def held_out(fraction, pool):
        # sklearn's own count (ceil), raised to one image per class for tiny sets
        return fraction if np.ceil(fraction * len(pool)) >= n_classes else n_classes

    try:
        if test_size:
            rest, test = train_test_split(index, test_size=held_out(test_size, index),
                                          stratify=labels, random_state=seed)
            codes[test] = TEST
            index = np.sort(rest)
        if val_size:
            fraction = val_size / (1 - test_size)
            _, val = train_test_split(index, test_size=held_out(fraction, index),
                                      stratify=labels[index], random_state=seed)
            codes[val] = VAL
    except ValueError as exc:
        raise UserError(f"cannot split {n} images this way ({exc}); lower --test-size/--val-size "
                        "or add images") from exc
    return codes


def split_counts(codes) -> dict:
    codes = np.asarray(codes)
    return {name: int((codes == i).sum()) for i, name in enumerate(SPLIT_NAMES)}

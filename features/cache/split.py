"""The one place a train/val/test assignment is made; everything later reads it from the cache.

The split belongs to the image folder, not to one cache: `folder_split` keeps every code the
folder's split record (split_record.py) already holds and assigns the rest, so every cache made
from a folder with the same split flags splits each image alike, fresh or grown. Two rules,
both stratified and seeded, and an image keeps the code it was given for life:
- `assign_split`: the first split of a folder (nothing recorded yet) is drawn over the whole
  folder, as scikit-learn's `train_test_split` does.
- `assign_new_split`: images the record does not hold yet are split per class by a seeded hash of
  their relative path (`hash_unit`), filling each class's test and val shares up to their
  fractions of the class's new total; images already assigned are never moved.
"""

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


def hash_unit(path: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, relative path): an image's place in the queue of its
    class when a grown cache hands out test and val places."""
    import hashlib

    digest = hashlib.sha256(f"{seed}\t{path}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_new_split(paths, labels, kept_labels, kept_codes, *, test_size: float,
                     val_size: float, seed: int) -> np.ndarray:
    """Split codes for images added to a cache whose rows keep theirs (`kept_labels`, `kept_codes`).

    Per class, the new images sorted by `hash_unit` take test places until the class's test rows
    reach round(test_size x its new total) (at least one when the fraction is set and the class
    has 3 or more images), then val places likewise, then train."""
    labels, codes = np.asarray(labels, dtype=np.int64), np.full(len(paths), TRAIN, np.uint8)
    kept_labels, kept_codes = np.asarray(kept_labels, np.int64), np.asarray(kept_codes)
    for label in np.unique(labels):
        mine = np.flatnonzero(labels == label)
        queue = mine[np.argsort([hash_unit(paths[i], seed) for i in mine], kind="stable")]
        held = kept_codes[kept_labels == label]
        total = len(held) + len(mine)
        for code, fraction in ((TEST, test_size), (VAL, val_size)):
            want = _share(fraction, total) - int((held == code).sum())
            take = queue[:max(0, min(want, len(queue)))]
            codes[take], queue = code, queue[len(take):]
    return codes


def _share(fraction: float, total: int) -> int:
    """A class's held-out count for `fraction` of `total` images (one at least, as for tiny
    first splits, when the fraction is set and the class has 3 or more)."""
    if not fraction:
        return 0
    return max(int(round(fraction * total)), 1 if total >= 3 else 0)


def folder_split(paths, labels, known, *, test_size: float, val_size: float,
                 seed: int) -> np.ndarray:
    """Split codes for a folder's images (`paths` with their `labels`): an image in `known`
    ({relative path: code}, the folder's record) keeps its code; the others are drawn by
    `assign_split` when none is known, else by the hash rule against the known ones."""
    codes = np.array([known.get(path, -1) for path in paths], dtype=np.int16)
    new = codes < 0
    if new.all():
        return assign_split(labels, test_size=test_size, val_size=val_size, seed=seed)
    if new.any():
        labels = np.asarray(labels)
        codes[new] = assign_new_split([p for p, n in zip(paths, new) if n], labels[new],
                                      labels[~new], codes[~new], test_size=test_size,
                                      val_size=val_size, seed=seed)
    return codes.astype(np.uint8)


def split_counts(codes) -> dict:
    codes = np.asarray(codes)
    return {name: int((codes == i).sum()) for i, name in enumerate(SPLIT_NAMES)}

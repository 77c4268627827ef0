"""Growing a cache with its folder: which rows stay, which images are new, which are gone, and the
rows of the grown cache (old rows copied from the old cache, new rows from the journal) in the
folder's order. Nothing here computes a feature; extract (bottleneck/extract.py) drives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Growth:
    """How a cache differs from its folder now; positions are places in the folder's order."""

    keep: list[int]                      # cache rows that stay, in cache order
    keep_pos: list[int]
    keep_labels: list[int]               # their labels in the folder's class list
    new_paths: list[str]                 # images to compute, in folder order
    new_labels: list[int]
    new_pos: list[int]
    new_rejected: list[tuple[str, str]]  # new files whose names cannot be read
    removed: list[str]                   # rows and skipped images no longer in the folder
    skipped: list[tuple[str, str]]       # the cache's skipped images still in the folder

    @property
    def added(self) -> list[str]:
        return sorted(self.new_paths + [path for path, _ in self.new_rejected])

    @property
    def changed(self) -> bool:
        return bool(self.new_paths or self.new_rejected or self.removed)


def plan_growth(cache, paths, labels, class_names, rejected) -> Growth:
    """Compare `cache` (a features.cache.store.Cache) with a folder scan (paths, labels, class
    names, rejected names): rows of images still there stay, images it never listed are new."""
    pos = {path: i for i, path in enumerate(paths)}
    listed = set(pos) | {path for path, _ in rejected}
    known = set(cache.paths) | {path for path, _ in cache.skipped}
    keep = [row for row, path in enumerate(cache.paths) if path in pos]
    relabel = {name: i for i, name in enumerate(class_names)}
    new = [i for i, path in enumerate(paths) if path not in known]
    return Growth(
        keep=keep, keep_pos=[pos[cache.paths[r]] for r in keep],
        keep_labels=[relabel[cache.class_names[int(cache.labels[r])]] for r in keep],
        new_paths=[paths[i] for i in new], new_labels=[int(labels[i]) for i in new], new_pos=new,
        new_rejected=[(p, r) for p, r in rejected if p not in known],
        removed=sorted(known - listed),
        skipped=[(p, r) for p, r in cache.skipped if p in listed])


def growth_from_json(data: dict) -> Growth:
    """A Growth as an update journal's plan recorded it (pairs come back as lists)."""
    pairs = {k: [tuple(x) for x in data[k]] for k in ("new_rejected", "skipped")}
    return Growth(**{**data, **pairs})


def merge_order(keep_pos, new_pos) -> tuple[np.ndarray, np.ndarray]:
    """(is_new, index) per row of the grown cache, in folder order: index is a kept cache row
    (is_new False) or a position among the new rows that were computed (is_new True)."""
    places = np.concatenate([np.asarray(keep_pos, np.int64), np.asarray(new_pos, np.int64)])
    is_new = np.r_[np.zeros(len(keep_pos), bool), np.ones(len(new_pos), bool)]
    index = np.r_[np.arange(len(keep_pos)), np.arange(len(new_pos))]
    order = np.argsort(places, kind="stable")
    return is_new[order], index[order]


class _Stream:
    """The journal's new rows, handed out a few at a time in order."""

    def __init__(self, blocks):
        self.blocks, self.buf = iter(blocks), {}

    def take(self, k: int) -> dict:
        parts = []
        while k > 0:
            if not self.buf or not len(next(iter(self.buf.values()))):
                self.buf = next(self.blocks)
            n = min(k, len(next(iter(self.buf.values()))))
            parts.append({name: a[:n] for name, a in self.buf.items()})
            self.buf = {name: a[n:] for name, a in self.buf.items()}
            k -= n
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def merged_rows(cache, names, keep, is_new, index, new_blocks, block_rows: int = 1024):
    """Yield (row start, {name: array}) of the grown cache: kept rows copied from `cache` (rows
    `keep[index]`), new rows taken in order from `new_blocks` (dicts of arrays), a block at a
    time, so neither cache sits in memory whole."""
    stream = _Stream(new_blocks)
    keep = np.asarray(keep, np.int64)
    for start in range(0, len(is_new), block_rows):
        new, idx = is_new[start:start + block_rows], index[start:start + block_rows]
        fresh = stream.take(int(new.sum())) if new.any() else {}
        rows = keep[idx[~new]]
        sort = np.argsort(rows, kind="stable")   # HDF5 reads want sorted rows
        out = {}
        for name in names:
            got = cache.rows_of(name, rows[sort])
            old = np.empty_like(got)
            old[sort] = got
            arr = np.empty((len(new), *old.shape[1:]), np.float32)
            arr[~new] = old
            if new.any():
                arr[new] = fresh[name]
            out[name] = arr
        yield start, out

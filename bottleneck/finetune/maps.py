"""The map cache of the cache route: the activation at the cut, checked against the head, and
its train/val/test streams.

`extract --layer CUT --pool none [--views K] [--storage float16]` caches the body's map at the
cut for every image (and K augmented views). `open_maps` refuses, in one line and before any
work, a cache that cannot feed the head: other backbone, width, weights, size, preprocessing,
classes or images/split, pooled features, or a layer that is not below every tap the head reads
(or not the one --unfreeze-from expects). `map_data` serves the maps as Keras batches: held in
RAM (in their stored dtype) when they fit the memory budget, else streamed from the HDF5 file a
block of rows at a time in random block order. Each train epoch draws, per image, the plain map
or one of its K cached views: the views are the augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bottleneck.finetune.options import FinetuneOptions
from bottleneck.finetune.source import Source
from bottleneck.finetune.training import Data
from features.cache.sizing import available_memory, human
from features.cache.store import Cache
from features.errors import UserError

# what the maps and the head must share (the cut layer is checked on its own)
SHARED_KEYS = ("backbone", "alpha", "weights", "image_size", "preprocess", "class_names",
               "data_id")


@dataclass
class Maps:
    """An opened map cache and where it cuts the body."""

    cache: Cache
    layer: str            # the cached layer (the cut): its output is the top's input
    index: int            # its index in the backbone's body
    shape: tuple          # (H, W, C) of one map
    views: int

    @property
    def bytes_per_map(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.cache.storage).itemsize

    def describe(self) -> str:
        return (f"{self.layer} {'x'.join(map(str, self.shape))} {self.cache.storage}, "
                f"{self.bytes_per_map / 1024:.1f} KB per map, {1 + self.views} view(s) per image")


def open_maps(opts: FinetuneOptions, source: Source) -> Maps:
    """The map cache of --from-cache, checked against the head (one-line refusals)."""
    path = opts.from_cache
    cache = Cache(path)
    try:
        return _check(cache, path, source)
    except BaseException:
        cache.close()
        raise


def _check(cache: Cache, path: str, source: Source) -> Maps:
    prov, head = cache.provenance(), source.provenance
    diffs = head.mismatches(prov, SHARED_KEYS, mine="the head's features have",
                            theirs="the maps have")
    if diffs:
        raise UserError(f"--from-cache {path} cannot feed this head: {'; '.join(diffs)}; extract "
                        "the maps from the head's images with its backbone, weights and size")
    if prov.pool != "none" or len(prov.layers) != 1:
        raise UserError(f"--from-cache {path} holds {prov.pool}-pooled features of "
                        f"{len(prov.layers)} layer(s); it needs the whole map of one layer at the "
                        "cut: extract --layer CUT --pool none")
    index, lowest = int(prov.layer_indices[0]), min(int(i) for i in head.layer_indices)
    if index >= lowest:
        raise UserError(f"--from-cache {path} holds {prov.layers[0]} (layer #{index}), which is "
                        f"not below the head's tap {head.layers[0]} (#{lowest}); cache a lower "
                        "layer (python cli.py layers lists them)")
    shape = tuple(int(d) for d in cache.array(f"features/{prov.layers[0]}").shape[1:])
    if len(shape) != 3:
        raise UserError(f"--from-cache {path}: {prov.layers[0]} is not a spatial map {shape}")
    return Maps(cache, prov.layers[0], index, shape, cache.n_views)


def check_unfreeze(body, maps: Maps, spec: str | None) -> int:
    """The first trainable layer: the first weighted layer after the cut by default; a given
    --unfreeze-from must be exactly the one the cached maps feed, since the layers below it
    are not in the top (the maps replace them)."""
    from bottleneck.backbones.network import layer_index
    from bottleneck.backbones.stages import first_weighted_after

    first = first_weighted_after(body, maps.index)
    if first is None:
        raise UserError(f"no weighted layer above the cached {maps.layer}")
    if spec is None:
        return first[1]
    index = layer_index(body, spec, flag="--unfreeze-from", body_is="the body up to the tap")
    if index != first[1]:
        want = layer_feeding(body, index)
        raise UserError(f"--unfreeze-from {spec} expects maps of {want}, but the cache holds "
                        f"{maps.layer} (which feeds {first[0]}): extract --layer {want} "
                        "--pool none, or drop --unfreeze-from")
    return index


def layer_feeding(body, index: int) -> str:
    """The layer whose map feeds layer `index` (padding layers skipped)."""
    for i in range(index - 1, 0, -1):
        layer = body.layers[i]
        if type(layer).__name__ != "ZeroPadding2D" and len(layer.output.shape) == 4:
            return layer.name
    return body.layers[0].name


# ---------------------------------------------------------------- the streams

def memory_plan(maps: Maps, rows: dict, opts: FinetuneOptions) -> dict:
    """Whether the maps fit the memory budget (held in RAM) or must stream, and the sizes; a
    budget that cannot hold even one streamed block is refused before any work."""
    budget = (opts.memory_budget * 2**30 if opts.memory_budget
              else 0.5 * available_memory())
    n_train, n_eval = len(rows["train"]), len(rows["val"]) + len(rows["test"])
    need = (n_train * (1 + maps.views) + n_eval) * maps.bytes_per_map
    per_row = (1 + maps.views) * maps.bytes_per_map * 3   # stored, plus float32 copies
    block = max(opts.batch_size, min(block_rows(maps, opts.batch_size), int(budget // per_row)))
    block_bytes = block * per_row
    if block_bytes > budget:
        raise UserError(f"the memory budget ({human(budget)}) cannot hold one block of "
                        f"{block} maps ({human(block_bytes)} while read; {maps.describe()}); "
                        "raise --memory-budget or lower --batch-size")
    return {"in_memory": need <= budget, "need_bytes": int(need), "budget_bytes": int(budget),
            "block_rows": block}


def block_rows(maps: Maps, batch_size: int) -> int:
    """Rows read at once when streaming at most: the HDF5 chunk, at least one batch (fewer when
    the memory budget says so)."""
    chunks = maps.cache.array(f"features/{maps.layer}").chunks
    return max(batch_size, int(chunks[0]) if chunks else batch_size)


def map_data(maps: Maps, rows: dict, labels, opts: FinetuneOptions, plan: dict) -> Data:
    """Train (repeating, a fresh order and view draw per pass), val and test streams of maps."""
    from bottleneck.finetune.recipe import balanced_class_weight

    reader = MapReader(maps, plan["in_memory"], plan["block_rows"])
    reader.passes = int(plan.get("epochs_done", 0))
    train = rows["train"]
    return Data(train=reader.train_dataset(train, labels[train], opts.batch_size, opts.seed),
                val=reader.plain_dataset(rows["val"], labels[rows["val"]], opts.batch_size)
                if len(rows["val"]) else None,
                test=reader.plain_dataset(rows["test"], labels[rows["test"]], opts.batch_size)
                if len(rows["test"]) else None,
                steps=int(np.ceil(len(train) / opts.batch_size)),
                class_weight=balanced_class_weight(labels[train])
                if opts.class_weight == "balanced" else None)


def _take_stored(dset, rows) -> np.ndarray:
    """dset[rows] (sorted rows) in the stored dtype: one contiguous read when dense."""
    rows = np.asarray(rows, dtype=np.int64)
    first, last = int(rows[0]), int(rows[-1]) + 1
    if last - first <= 2 * len(rows):
        return dset[first:last][rows - first]
    return dset[rows]


class MapReader:
    """Batches of maps (float32) from RAM or from the HDF5 file."""

    def __init__(self, maps: Maps, in_memory: bool, block: int):
        self.maps, self.in_memory, self.block = maps, in_memory, block
        self.plain = maps.cache.array(f"features/{maps.layer}")
        self.views = maps.cache.array(f"views/{maps.layer}") if maps.views else None
        self._held: dict = {}
        self.passes = 0     # train passes started: each Keras fit call (one epoch) starts one

    def _read(self, rows, with_views: bool):
        """(plain maps, views or None) of sorted `rows`, in the stored dtype."""
        key = (int(rows[0]), len(rows), with_views) if len(rows) else None
        if self.in_memory and key in self._held:
            return self._held[key]
        plain = _take_stored(self.plain, rows)
        views = _take_stored(self.views, rows) if with_views and self.views is not None else None
        if self.in_memory:
            self._held[key] = (plain, views)
        return plain, views

    def _blocks(self, rows):
        """`rows` (sorted) cut into consecutive blocks of `self.block` (the whole in RAM)."""
        if self.in_memory:
            return [rows]
        return [rows[i:i + self.block] for i in range(0, len(rows), self.block)]

    def train_batches(self, rows, labels, batch: int, seed: int):
        """Endless (maps, labels) batches: each pass a new block order, a new order inside each
        block, and per image the plain map or one of its K views drawn at random."""
        rng = np.random.default_rng(seed)
        k = self.maps.views
        blocks = self._blocks(np.asarray(rows))
        starts = np.cumsum([0] + [len(b) for b in blocks])
        while True:
            for b in rng.permutation(len(blocks)):
                plain, views = self._read(blocks[b], with_views=k > 0)
                order = rng.permutation(len(blocks[b]))
                pick = rng.integers(0, 1 + k, len(order)) if k else np.zeros(len(order), int)
                for i in range(0, len(order), batch):
                    idx, v = order[i:i + batch], pick[i:i + batch]
                    x = plain[idx].astype(np.float32)
                    aug = v > 0
                    if aug.any():
                        x[aug] = views[idx[aug], v[aug] - 1]
                    yield x, labels[starts[b] + idx]

    def plain_batches(self, rows, labels, batch: int):
        """(maps, labels) of `rows` in order, the plain view only, one pass."""
        rows = np.asarray(rows)
        for block in self._blocks(rows):
            plain, _ = self._read(block, with_views=False)
            offset = int(np.searchsorted(rows, block[0]))
            for i in range(0, len(block), batch):
                stop = min(i + batch, len(block))
                yield plain[i:stop].astype(np.float32), labels[offset + i:offset + stop]

    def _dataset(self, make):
        from features.tf import tf

        spec = (tf.TensorSpec((None, *self.maps.shape), tf.float32),
                tf.TensorSpec((None,), tf.int32))
        return tf.data.Dataset.from_generator(make, output_signature=spec).prefetch(2)

    def train_dataset(self, rows, labels, batch: int, seed: int):
        """Each new iteration (Keras starts one per epoch) draws from seed + its pass number,
        so epochs differ, and a resumed run (`passes` set to its epoch) continues the draws."""
        labels = np.asarray(labels, np.int32)

        def make():
            self.passes += 1
            return self.train_batches(rows, labels, batch, seed * 100003 + self.passes)

        return self._dataset(make)

    def plain_dataset(self, rows, labels, batch: int):
        labels = np.asarray(labels, np.int32)
        return self._dataset(lambda: self.plain_batches(rows, labels, batch))

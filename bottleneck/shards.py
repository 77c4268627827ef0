"""Computing one shard (a contiguous range of the plan's images) into the journal, batch by batch.

Everything here works from the journal's plan and a forward function, never from a folder scan or
the parent's network, so the same code runs in `extract`'s own process, in one worker process per
device (bottleneck/worker.py) and in a Ray actor (bottleneck/engines/ray_engine.py).
Importing this module imports no TensorFlow.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from features.cache.journal import Journal, Shard
from features.errors import UserError


@dataclass(frozen=True)
class BatchSettings:
    """What computing batches needs besides the network: picklable, sent to every worker."""

    out: str            # the cache path; its journal is out + '.partial'
    root: str           # the data folder the plan's paths are relative to
    image_size: int
    views: int
    batch_size: int
    seed: int


@dataclass
class ShardCounts:
    """What a run of shards did: images computed, and the steady rate after warm-up."""

    computed: int = 0
    steady: float | None = None
    first_batch_seconds: float | None = None   # from the start to the first journaled batch


class BatchRunner:
    """Forward passes over plan items, journaled batch by batch (the journal writes in a
    background thread while the next batch computes). On a GPU out-of-memory error the batch
    size is halved and the batch retried, and the user is told once per halving."""

    def __init__(self, settings: BatchSettings, journal: Journal, forward, start: int, say=print):
        from features.tf import tf

        self.tf, self.settings, self.journal, self.forward = tf, settings, journal, forward
        self.paths, self.root = journal.plan["paths"], settings.root
        self.size, self.views, self.seed = settings.image_size, settings.views, settings.seed
        self.batch_size, self.say = settings.batch_size, say
        self.shapes = list(journal.plan["datasets"].values())
        self.covered, self.computed = start, 0
        self.writer, self.pending = journal.writer(), []

    def padded(self, x):
        """`x` padded with zeros to a whole batch: one input shape for every call, so the last
        (or a fallback) batch reuses the compiled kernels instead of building new ones."""
        short = self.batch_size - int(x.shape[0])
        if short <= 0:
            return x
        return self.tf.concat([x, self.tf.zeros((short, *x.shape[1:]), x.dtype)], 0)

    def rows(self, x) -> list[np.ndarray]:
        """The forward pass over `x` in chunks of the batch size, halving it on out-of-memory."""
        n = int(x.shape[0])
        while True:
            try:
                if n == self.batch_size:   # the usual batch: no slice, copy or concatenation
                    return [t.numpy() for t in self.forward(x)]
                parts = [self.forward(self.padded(x[i:i + self.batch_size]))
                         for i in range(0, n, self.batch_size)]
                return [np.concatenate([p[k].numpy() for p in parts])[:n]
                        for k in range(len(parts[0]))]
            except self.tf.errors.ResourceExhaustedError:
                self.halve_batch()

    def halve_batch(self) -> None:
        """Out of device memory: continue with half the batch (features do not change)."""
        if self.batch_size == 1:
            raise UserError("out of device memory with one image per batch; use a smaller "
                            "--image-size, another backbone, or a device with more memory")
        self.batch_size //= 2
        self.say(f"warning: out of device memory; batch size halved to {self.batch_size} and the "
                 f"batch retried (pass --batch-size {self.batch_size} next time)")

    def compute(self, images, views) -> list[np.ndarray]:
        """Arrays for one batch, in the plan's dataset order: features/*, then views/*."""
        n = int(images.shape[0])
        out = self.rows(images)
        if self.views:
            flat = self.tf.reshape(views, (-1, self.size, self.size, 3))
            out += [f.reshape(n, self.views, *f.shape[1:]) for f in self.rows(flat)]
        return out

    def pillow_fallback(self, missing: list[int]):
        """Retry images TensorFlow dropped with Pillow: (index, images, views, skipped, reasons)."""
        from bottleneck.data.augment import augmented_views
        from bottleneck.data.images import decode_with_pillow

        index, images, views, skipped, reasons = [], [], [], [], []
        for i in missing:
            decoded, reason = decode_with_pillow(os.path.join(self.root, self.paths[i]))
            if decoded is None:
                skipped.append(i)
                reasons.append(reason)
                continue
            index.append(i)
            images.append(self.tf.image.resize(decoded, (self.size, self.size)))
            if self.views:
                views.append(augmented_views(decoded, i, self.seed, self.views, self.size))
        return index, images, views, skipped, reasons

    def finish(self, index: list[int], images, views, stop: int) -> None:
        """Journal plan items [covered, stop): the batch TF decoded plus Pillow's retries."""
        missing = sorted(set(range(self.covered, stop)) - set(index))
        extra_index, extra_images, extra_views, skipped, reasons = self.pillow_fallback(missing)
        arrays = self.compute(images, views) if len(index) else None
        if extra_images:
            stack = self.tf.stack
            extra = self.compute(stack(extra_images), stack(extra_views) if self.views else None)
            order = np.argsort(index + extra_index, kind="stable")
            arrays = extra if arrays is None else [np.concatenate([a, b])[order]
                                                   for a, b in zip(arrays, extra)]
            index = sorted(index + extra_index)
        if arrays is None:
            arrays = [np.zeros((0, *shape), np.float32) for shape in self.shapes]
        self.save(stop, index, arrays, skipped, reasons)

    def save(self, stop: int, index, arrays, skipped, reasons) -> None:
        """Hand one finished batch to the journal's writer; re-raise a failed write promptly."""
        self.pending.append(self.writer.submit(self.journal.save_batch, stop, index, arrays,
                                               skipped, reasons))
        while self.pending and self.pending[0].done():
            self.pending.pop(0).result()   # e.g. disk full
        self.computed += len(index)
        self.covered = stop

    def close(self) -> None:
        """Wait for every journal write; re-raise the first that failed."""
        self.writer.shutdown(wait=True)
        for future in self.pending:
            future.result()


def shard_dataset(runner: BatchRunner, shard: Shard, prefetch: bool = True):
    """The decoded batches of plan items [shard.start, shard.stop); never across its end."""
    from bottleneck.data.images import image_dataset

    absolute = [os.path.join(runner.root, p) for p in runner.paths[shard.start:shard.stop]]
    return image_dataset(absolute, range(shard.start, shard.stop), runner.size,
                         runner.settings.batch_size, views=runner.views, seed=runner.seed,
                         prefetch=prefetch)


def feed(runner: BatchRunner, shards: list[Shard], batches,
         on_batch: Callable[[int], None]) -> None:
    """Journal `batches` (the shards' batches in order, undecodable images missing) shard by
    shard: a shard is closed (its trailing unreadable items recorded) before the next begins."""
    pending = list(shards)
    runner.covered = pending[0].start

    def close_shard() -> None:
        shard = pending.pop(0)
        if runner.covered < shard.stop:
            before = runner.covered
            runner.finish([], None, None, shard.stop)
            on_batch(shard.stop - before)
        if pending:
            runner.covered = pending[0].start

    for index, images, *views in batches:
        index = index.numpy().tolist()
        while index[0] >= pending[0].stop:
            close_shard()
        before = runner.covered
        runner.finish(index, images, views[0] if views else None, index[-1] + 1)
        on_batch(runner.covered - before)
    while pending:
        close_shard()


def run_shard(runner: BatchRunner, shard: Shard, on_batch: Callable[[int], None]) -> None:
    """Compute plan items [shard.start, shard.stop) with `runner`; `on_batch(images)` after each
    journaled batch. Batches end at the shard's end, never across it."""
    feed(runner, [shard], shard_dataset(runner, shard), on_batch)


def run_shards(settings: BatchSettings, journal: Journal, forward, shards: list[Shard],
               on_batch: Callable[[int], None], say=print) -> ShardCounts:
    """Compute `shards` in order in this process, from one decoding pipeline over all of them
    (so decoding runs ahead across a shard's end instead of restarting cold at each shard); the
    steady rate is timed after the first batch (tracing and warm-up done)."""
    counts, clock, started = ShardCounts(), {}, time.perf_counter()

    def batch_done(images: int) -> None:
        if not clock:
            clock.update(t=time.perf_counter(), n=runner.computed)
        on_batch(images)

    runner = BatchRunner(settings, journal, forward, shards[0].start if shards else 0, say)
    try:
        if shards:
            parts = [shard_dataset(runner, shard, prefetch=False) for shard in shards]
            batches = parts[0]
            for part in parts[1:]:
                batches = batches.concatenate(part)
            feed(runner, shards, batches.prefetch(runner.tf.data.AUTOTUNE), batch_done)
    finally:
        runner.close()
    counts.computed = runner.computed
    if clock:
        counts.first_batch_seconds = clock["t"] - started
        if runner.computed > clock["n"]:
            counts.steady = (runner.computed - clock["n"]) / (time.perf_counter() - clock["t"])
    return counts

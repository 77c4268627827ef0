"""Stage 1: run a frozen backbone once over an image folder and cache its features in HDF5.

Work is journaled batch by batch (features/journal.py) so an interrupted run resumes where it
stopped, and the cache appears under its final name only when complete (features/store.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from bottleneck.backbones.network import (
    build_feature_model,
    compiled_forward,
    default_layer_specs,
)
from bottleneck.backbones.registry import check_weights_arg, get_backbone, weights_id
from bottleneck.data.images import (
    augmented_views,
    decode_with_pillow,
    image_dataset,
    scan_folder,
)
from features.errors import UserError
from features.journal import Journal
from features.split import assign_split, split_counts
from features.store import Cache, CacheConfig, write_cache
from features.versions import library_versions


@dataclass
class ExtractOptions:
    data: str
    backbone: str = "vgg16"
    alpha: float | None = None
    weights: str = "imagenet"
    layers: tuple[str, ...] = ()
    pool: str = "avg"
    image_size: int | None = None
    batch_size: int = 32
    test_size: float = 0.2
    val_size: float = 0.1
    seed: int = 0
    out: str | None = None
    overwrite: bool = False
    precision: str = "float32"
    views: int = 0                  # augmented views per image, stored beside the plain view
    progress: bool = True
    stop_after: int | None = None   # for tests: stop (as if killed) after this many batches
    steady_rate: float | None = None  # set by the run: img/s after the first batch


def default_out_path(data_dir: str, backbone: str, alpha, layers, pool, image_size) -> str:
    name = os.path.basename(os.path.abspath(data_dir).rstrip("/")) or "data"
    width = f"-a{alpha:g}" if alpha is not None else ""
    layer = layers[0] if len(layers) == 1 else f"{len(layers)}layers"
    return os.path.join("features", f"{name}_{backbone}{width}_{layer}_{pool}_{image_size}.h5")


def run_extract(opts: ExtractOptions, say=print) -> dict:
    """Extract (or resume, or confirm) a cache; returns the run's summary as a dict."""
    started = time.time()
    row = get_backbone(opts.backbone)
    weights = check_weights_arg(opts.weights)
    if opts.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if not 0 <= opts.views <= 128:
        raise UserError("--views must be between 0 (plain view only) and 128")
    image_size = opts.image_size or row.default_size
    alpha = None if not row.alphas else float(opts.alpha if opts.alpha is not None else 1.0)
    if opts.alpha is not None and not row.alphas and float(opts.alpha) != 1.0:
        raise UserError(f"--alpha applies to mobilenet, mobilenetv2 and mobilenetv3*; {row.name} "
                        "has no width multiplier: drop --alpha")
    folder = scan_folder(opts.data)
    split = folder.split if folder.split is not None else assign_split(
        folder.labels, test_size=opts.test_size, val_size=opts.val_size, seed=opts.seed)

    model, taps = build_feature_model(row, weights=weights, image_size=image_size, alpha=alpha,
                                      layer_specs=list(opts.layers) or default_layer_specs(row),
                                      pool=opts.pool, precision=opts.precision, fold_bn=True)
    layer_names = [name for name, _ in taps]
    datasets = {f"features/{n}": list(o.shape[1:]) for n, o in zip(layer_names, model.outputs)}
    if opts.views:
        datasets.update({f"views/{n}": [opts.views, *o.shape[1:]]
                         for n, o in zip(layer_names, model.outputs)})
    config = CacheConfig(
        data_dir=folder.root, backbone=row.name, alpha=alpha, weights=weights_id(weights),
        image_size=image_size, pool=opts.pool, layers=tuple(layer_names),
        layer_indices=tuple(i for _, i in taps), preprocess=row.preprocess,
        precision=opts.precision, seed=opts.seed,
        test_size=0.0 if folder.split is not None else opts.test_size,
        val_size=0.0 if folder.split is not None else opts.val_size, views=opts.views)
    out = opts.out or default_out_path(folder.root, row.name, alpha, layer_names, opts.pool,
                                       image_size)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    journal = Journal(out)

    if os.path.exists(out):
        if opts.overwrite:
            os.remove(out)
        else:
            with Cache(out) as existing:
                diffs = config.differences(existing.config)
                if diffs:
                    raise UserError(f"{out} already holds a different cache ({'; '.join(diffs)}); "
                                    "pass another --out, or --overwrite to replace it")
                summary = existing.summary()
                known = set(existing.paths) | {p for p, _ in existing.skipped}
            journal.discard()
            changed = len(set(folder.paths) ^ known)
            if changed:
                say(f"warning: {changed} image(s) were added to or removed from {folder.root} "
                    "since this cache was made; --overwrite re-extracts them all")  # a run killed between the final rename and its clean-up
            say(f"{out} is already complete for these settings; nothing to do "
                "(--overwrite re-extracts).")
            return {**summary, "resumed": False, "already_complete": True, "seconds": 0.0}
    if journal.exists:
        if opts.overwrite:
            journal.discard()
        else:
            journal.check_matches(config.to_json())
    if not journal.exists:
        journal.start({
            "config": config.to_json(), "class_names": folder.class_names,
            "paths": folder.paths, "labels": folder.labels.tolist(), "split": split.tolist(),
            "datasets": datasets,
        })
    plan = journal.plan
    paths = plan["paths"]
    n = len(paths)
    done = journal.done()
    resumed = done > 0
    if resumed:
        say(f"resuming {out}: {done} of {n} images already done")
    elif folder.n_ignored:
        say(f"ignoring {folder.n_ignored} file(s) that are not images")

    computed = _run_batches(journal, model, paths, folder.root, image_size, opts, start=done,
                            say=say)
    if computed is None:
        return {"interrupted": True, "path": out, "done": journal.done(), "n_planned": n}

    ok, skipped = journal.collect()
    if not ok:
        raise UserError(f"none of the {n} images could be read; see {journal.dir} for details")
    labels = np.asarray(plan["labels"])[ok]
    write_cache(out, config, class_names=plan["class_names"], paths=[paths[i] for i in ok],
                labels=labels, split=np.asarray(plan["split"], dtype=np.uint8)[ok],
                shards=journal.iter_rows(list(plan["datasets"])), datasets=plan["datasets"],
                skipped=[(paths[i], reason) for i, reason in skipped],
                versions=library_versions(), created=datetime.now(timezone.utc).isoformat(),
                weights_path=os.path.abspath(weights) if weights not in (None, "imagenet") else None)
    journal.discard()
    seconds = time.time() - started
    result = {
        "path": out, "n_images": len(ok), "n_skipped": len(skipped), "n_computed": computed,
        "resumed": resumed, "already_complete": False, "seconds": round(seconds, 2),
        "images_per_second": round(computed / seconds, 2) if seconds else None,
        "steady_images_per_second": round(opts.steady_rate, 2) if opts.steady_rate else None,
        "file_mb": round(os.path.getsize(out) / 2**20, 3), "backbone": row.name, "alpha": alpha,
        "weights": config.weights, "image_size": image_size, "pool": opts.pool,
        "layers": layer_names, "views": opts.views,
        "features": {k.split("/", 1)[1]: v for k, v in plan["datasets"].items()
                     if k.startswith("features/")},
        "split": split_counts(np.asarray(plan["split"])[ok]), "classes": plan["class_names"],
        "skipped": [{"path": paths[i], "reason": reason} for i, reason in skipped],
    }
    return result


def _run_batches(journal, model, paths, root, image_size, opts, *, start, say):
    """Forward every image from plan index `start` on, saving one journal entry per batch.

    Returns the number of images computed, or None when stopped early by `opts.stop_after`.
    """
    from tqdm import tqdm

    from features.tf import tf

    n = len(paths)
    if start >= n:
        return 0
    forward = compiled_forward(model)
    shapes = list(journal.plan["datasets"].values())
    absolute = [os.path.join(root, p) for p in paths[start:]]
    dataset = image_dataset(absolute, range(start, n), image_size, opts.batch_size,
                            views=opts.views, seed=opts.seed)
    bar = tqdm(total=n, initial=start, unit="img", desc="extract", disable=not opts.progress,
               dynamic_ncols=True, smoothing=0.1)
    covered, computed, batches = start, 0, 0
    writer, pending = journal.writer(), []
    steady = {}  # images and time after the first batch (tracing, warm-up) is done

    def padded(x):
        """`x` padded with zeros to a whole batch: one input shape for every call, so the last
        (or a fallback) batch reuses the compiled kernels instead of building new ones."""
        short = opts.batch_size - int(x.shape[0])
        return tf.concat([x, tf.zeros((short, *x.shape[1:]), x.dtype)], 0) if short > 0 else x

    def compute(images, views):
        """Arrays for one batch, in the plan's dataset order: features/*, then views/*."""
        n = int(images.shape[0])
        out = [f.numpy()[:n] for f in forward(padded(images))]
        if opts.views:
            flat = tf.reshape(padded(views), (-1, image_size, image_size, 3))
            out += [f.numpy().reshape(-1, opts.views, *f.shape[1:])[:n] for f in forward(flat)]
        return out

    def finish(index, images, views, stop):
        """Retry the images TF dropped in [covered, stop) with Pillow, then journal the batch."""
        nonlocal covered, computed
        index = list(index)
        missing = sorted(set(range(covered, stop)) - set(index))
        skipped_index, skipped_reason, extra_index, extra_images, extra_views = [], [], [], [], []
        for i in missing:
            decoded, reason = decode_with_pillow(os.path.join(root, paths[i]))
            if decoded is None:
                skipped_index.append(i)
                skipped_reason.append(reason)
                continue
            extra_index.append(i)
            extra_images.append(tf.image.resize(decoded, (image_size, image_size)))
            if opts.views:
                extra_views.append(augmented_views(decoded, i, opts.seed, opts.views, image_size))
        arrays = compute(images, views) if len(index) else None
        if extra_images:
            extra = compute(tf.stack(extra_images), tf.stack(extra_views) if opts.views else None)
            order = np.argsort(index + extra_index, kind="stable")
            arrays = extra if arrays is None else [np.concatenate([a, b])[order]
                                                   for a, b in zip(arrays, extra)]
            index = sorted(index + extra_index)
        if arrays is None:
            arrays = [np.zeros((0, *shape), np.float32) for shape in shapes]
        pending.append(writer.submit(journal.save_batch, stop, index, arrays, skipped_index,
                                     skipped_reason))
        while pending and pending[0].done():
            pending.pop(0).result()  # re-raise a failed write (e.g. disk full) promptly
        computed += len(index)
        bar.update(stop - covered)
        covered = stop

    try:
        for index, images, *views in dataset:
            index = index.numpy()
            finish(index.tolist(), images, views[0] if views else None, int(index[-1]) + 1)
            batches += 1
            if batches == 1:
                steady.update(start=time.perf_counter(), computed=computed)
            if opts.stop_after is not None and batches >= opts.stop_after:
                return None
        if covered < n:
            finish([], None, None, n)
    finally:
        writer.shutdown(wait=True)
        bar.close()
    for future in pending:
        future.result()
    if steady and computed > steady["computed"]:
        opts.steady_rate = (computed - steady["computed"]) / (time.perf_counter() - steady["start"])
    return computed

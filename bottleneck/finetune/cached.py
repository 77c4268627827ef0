"""Stage 3 from the cache (`finetune --from-head HEAD --from-cache MAPS.h5`): train only the layers
above the cut, plus the transplanted head, on cached maps.

On a CPU most of an image-route epoch re-runs the frozen lower body on images it has seen. Here
the body's activation at the cut is read from the map cache (maps.py) instead, and only the top
trains: the body's layers above the cut (a sub-network of the same Keras layers), the head's
pooling and the head as Keras layers. BatchNorm stays in inference mode, as on the image route;
augmentation is the cache's K augmented views (the frozen bottom sees no other augmentation).

What is saved is the whole network, image -> preprocessing -> frozen bottom (to the cut) -> top,
stock Keras layers only (loads with `keras.saving.load_model`); its predictions on images equal
the top's on the cached maps, checked at the end on test images (`image_check`). The epoch loop,
checkpoints and --resume are the image route's (training.py); MODEL.last.keras holds the top with
its optimizer state, which --resume loads and puts back on a freshly built bottom.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from bottleneck.finetune.maps import Maps, check_unfreeze, map_data, memory_plan, open_maps
from bottleneck.finetune.options import FinetuneOptions
from bottleneck.finetune.recipe import block_lr_scales, compile_network
from bottleneck.finetune.source import Source
from bottleneck.finetune.training import (
    Trainer,
    TrainState,
    WeightAveraging,
    callbacks_for,
    evaluate,
)
from bottleneck.finetune.transplant import (
    apply_spec,
    attach_meta,
    head_layers,
    save_network,
)
from features.errors import UserError
from features.tf import keras


def run_from_cache(opts: FinetuneOptions, source: Source, say, started: float) -> dict:
    """The cache route of `run_finetune`; returns the run's summary."""
    maps = open_maps(opts, source)
    try:
        return _run(opts, source, maps, say, started)
    finally:
        maps.cache.close()


def _run(opts, source: Source, maps: Maps, say, started: float) -> dict:
    plan = memory_plan(maps, source.rows, opts)
    parts = build_parts(source, maps, opts.weights)
    unfreeze = check_unfreeze(parts.body, maps, opts.unfreeze_from)
    say(f"cache route: maps {maps.describe()}; "
        + ("held in RAM" if plan["in_memory"] else f"streamed from {maps.cache.path}")
        + f" ({plan['need_bytes'] / 2**20:.0f} MB of maps, budget "
          f"{plan['budget_bytes'] / 2**20:.0f} MB); training "
          f"{parts.body.layers[unfreeze].name} .. {source.layers[-1]} + the head")
    state = _resume(opts, parts, say)
    scales = block_lr_scales(parts.top_layers(), parts.body, opts.block_lr_decay)
    check = None if state is not None else _check_top(parts, maps, source, opts, say)
    plan["epochs_done"] = state.epoch if state is not None else 0
    data = map_data(maps, source.rows, maps.cache.labels, opts, plan)
    opts.paths.make_folders()
    trainable = set_top_trainable(parts, unfreeze)
    if opts.find_lr:
        return _find_lr(opts, parts, data, scales, say)
    if state is None:
        state = _start(parts, opts, data, check, scales, say)
    say(f"{trainable:,} trainable parameters")
    callbacks = callbacks_for(opts, state, say)
    stopped = Trainer(parts.top, opts, data, state, callbacks, say,
                      unfreeze=(unfreeze, parts.body.layers[unfreeze].name),
                      export=parts.whole, lr_scales=scales).fit()
    averaged = next((c.result for c in callbacks if isinstance(c, WeightAveraging)), None)
    result = _summary(opts, source, maps, state, stopped, averaged, plan, unfreeze, parts)
    result.update(_score_test(opts, source, maps, data, result, say))
    from bottleneck.finetune.report import plot_curves

    plot_curves(os.path.join(opts.paths.report, "training_curves.png"), state.history)
    result["seconds"] = round(time.time() - started, 2)
    say(f"saved {opts.paths.best} (the whole network), {opts.paths.last} (the top, for "
        f"--resume), report in {opts.paths.report}/")
    return result


# ---------------------------------------------------------------- the network in two parts

class Parts:
    """The frozen bottom (image -> map at the cut), the top (map -> probabilities) that trains,
    and the body they were cut from (for layer indices and stages)."""

    def __init__(self, body, bottom, top, meta: dict):
        self.body, self.bottom, self.top, self.meta = body, bottom, top, meta

    def sub(self):
        """The body's layers above the cut, as the nested model inside the top."""
        return self.top.get_layer("upper_body")

    def top_layers(self):
        return list(self.sub().layers) + [layer for layer in self.top.layers
                                          if layer.name.startswith("head_")]

    def whole(self):
        """image -> bottom -> top: the network saved as the model (shares the top's weights)."""
        image = keras.Input(self.bottom.inputs[0].shape[1:], name="image", dtype="float32")
        # the top's layers in an uncompiled model: a compiled one would carry its loss (ours,
        # with label smoothing) into the file, which plain Keras could not load
        top = keras.Model(self.top.inputs[0], self.top.outputs[0], name="top")
        whole = keras.Model(image, top(self.bottom(image)), name="finetune")
        attach_meta(whole, self.meta)
        return whole


def build_parts(source: Source, maps: Maps, weights: str | None, top=None) -> Parts:
    """The bottom and (unless `top` is given, e.g. loaded for --resume) a fresh top with the
    head's weights, from the backbone the head's provenance names."""
    from bottleneck.backbones.network import _recorded_weights, build_feature_model
    from bottleneck.backbones.registry import build_body, get_backbone

    prov = source.provenance
    row = get_backbone(prov.backbone)
    loaded = _recorded_weights(prov, weights)
    body = build_body(row, weights=loaded, image_size=prov.image_size, alpha=prov.alpha)
    if body.layers[maps.index].name != maps.layer:
        raise UserError(f"the cached layer {maps.layer} is #{body.layers[maps.index].name} in "
                        "this Keras build of the body; re-extract the maps")
    bottom, _ = build_feature_model(row, weights=loaded, image_size=prov.image_size,
                                    alpha=prov.alpha, layer_specs=[str(maps.index)], pool="none")
    bottom.trainable = False
    meta = {"class_names": source.class_names,
            "info": {**source.info, "route": "cache", "cut": maps.layer}}
    return Parts(body, bottom, top or _top(body, source, maps), meta)


def _top(body, source: Source, maps: Maps):
    """map -> body layers above the cut -> the head's pooling -> flatten/concat -> head."""
    from bottleneck.backbones.network import pool_layer
    from bottleneck.finetune.transplant import check_spec

    try:
        sub = keras.Model(body.get_layer(maps.layer).output,
                          [body.get_layer(name).output for name in source.layers],
                          name="upper_body")
    except ValueError as exc:
        raise UserError(f"the body cannot be cut at {maps.layer}: a connection (a residual) "
                        "crosses it; cache the map at a block's end (e.g. a *_add or *_relu "
                        "layer that feeds the next block alone)") from exc
    inputs = keras.Input(maps.shape, name="map", dtype="float32")
    outs = sub(inputs)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    feats = []
    for i, (name, out) in enumerate(zip(source.layers, outs)):
        pooled = pool_layer(source.provenance.pool, name)(out)
        feats.append(keras.layers.Flatten(name=f"flatten_{i}")(pooled)
                     if len(pooled.shape) > 2 else pooled)
    x = feats[0] if len(feats) == 1 else keras.layers.Concatenate(name="concat_taps")(feats)
    check_spec(source.spec, int(x.shape[-1]), len(source.class_names))
    pending = []
    for layer, weights in head_layers(source.spec):
        x = layer(x)
        if weights is not None:
            pending.append((layer, weights))
    for layer, weights in pending:
        layer.set_weights(weights)
    return keras.Model(inputs, x, name="top")


def set_top_trainable(parts: Parts, unfreeze: int) -> int:
    """Body layers from `unfreeze` up train, BatchNorm never (inference mode); the head trains.
    Returns the number of trainable parameters."""
    index = {layer.name: i for i, layer in enumerate(parts.body.layers)}
    sub = parts.sub()
    sub.trainable = True
    for layer in sub.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index.get(layer.name, -1) >= unfreeze and not is_bn
    return int(sum(np.prod(v.shape) for v in parts.top.trainable_weights))


# ---------------------------------------------------------------- start, resume, check

def _resume(opts: FinetuneOptions, parts: Parts, say) -> TrainState | None:
    """On --resume with a checkpoint: load the top (with its optimizer) into `parts`."""
    paths = opts.paths
    if not (opts.resume and os.path.isfile(paths.state) and os.path.isfile(paths.last)):
        if opts.resume:
            say(f"--resume: no checkpoint at {paths.last}; starting fresh")
        return None
    try:
        with open(paths.state) as handle:
            state = TrainState.from_json(json.load(handle))
        top = keras.saving.load_model(paths.last)
        top.get_layer("upper_body")
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise UserError(f"cannot resume from {paths.last} / {paths.state} ({exc}); run again "
                        "without --resume to start over") from exc
    parts.top = top
    say(f"resuming from {paths.last} after epoch {state.epoch}")
    return state


def _check_top(parts: Parts, maps: Maps, source: Source, opts, say) -> dict | None:
    """Before any training step: the top on the cached maps must reproduce the head on its own
    cached features (a sample of the test rows, val without a test split)."""
    rows = source.rows["test"] if len(source.rows["test"]) else source.rows["val"]
    n = min(opts.check_samples, len(rows))
    if not n:
        return None
    sample = np.unique(rows[np.linspace(0, len(rows) - 1, n).astype(int)])
    reference = source.head.predict_proba or (lambda X: apply_spec(source.spec, X))
    ref = np.asarray(reference(source.cache.features(source.layers, sample)))
    got = parts.top.predict(maps.cache.features(maps.layer, sample, flatten=False), verbose=0)
    check = {"n": int(len(sample)), "agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
             "max_abs_prob_diff": float(np.abs(got - ref).max())}
    say(f"transplant check on {check['n']} test maps: agreement {100 * check['agreement']:.2f}% "
        f"of argmax, max |prob diff| {check['max_abs_prob_diff']:.2e} (maps stored as "
        f"{maps.cache.storage})")
    if check["agreement"] < 0.995 or check["max_abs_prob_diff"] > 1e-2:
        say("  WARNING: the top on the maps does not reproduce the head; check that both caches "
            "come from the same images and weights")
    return check


def _start(parts: Parts, opts, data, check, scales, say) -> TrainState:
    """Compile the top; its val score on the maps is epoch 0, saved as the first best model."""
    compile_network(parts.top, opts.optimizer, opts.lr, opts.label_smoothing, scales)
    initial = {}
    for name, dataset in (("val", data.val), ("test", data.test)):
        if dataset is not None:
            initial[f"{name}_accuracy"] = evaluate(parts.top, dataset)[1]
    if initial:
        say("before training: " + ", ".join(f"{k} {v:.4f}" for k, v in initial.items()))
    state = TrainState(initial=initial, transplant=check)
    if data.val is not None:
        loss, accuracy = evaluate(parts.top, data.val)
        state.best_score, state.best_epoch = [accuracy, -loss], 0
        save_network(parts.whole(), opts.paths.best)
    return state


def _find_lr(opts, parts: Parts, data, scales, say) -> dict:
    from bottleneck.finetune.lr_find import find_lr

    compile_network(parts.top, opts.optimizer, opts.lr, opts.label_smoothing, scales)
    found = find_lr(parts.top, data.train, min(100, max(20, 2 * data.steps)),
                    opts.paths.report, say)
    return {"route": "cache", "lr_find": found, "report": opts.paths.report}


# ---------------------------------------------------------------- the end

def _summary(opts, source: Source, maps: Maps, state, stopped, averaged, plan, unfreeze,
             parts) -> dict:
    check = state.transplant or {}
    return {
        "model": opts.paths.best, "route": "cache", "from_head": source.info["from_head"],
        "head_kind": source.info["head_kind"], "backbone": source.provenance.backbone,
        "image_size": source.provenance.image_size, "from_cache": maps.cache.path,
        "cut": maps.layer, "map_shape": list(maps.shape), "storage": maps.cache.storage,
        "views": maps.views, "kb_per_map": round(maps.bytes_per_map / 1024, 1),
        "in_memory": plan["in_memory"],
        "transplant_agreement": check.get("agreement"),
        "transplant_max_abs_prob_diff": check.get("max_abs_prob_diff"),
        "transplant_n": check.get("n"), "initial": state.initial, "epochs": state.history,
        "best_epoch": state.best_epoch, "stopped": stopped,
        "train_seconds": round(state.seconds, 2), "averaged": averaged,
        "selected": "average" if averaged else "best val epoch",
        "unfreeze_from": parts.body.layers[unfreeze].name, "warmup_epochs": 0,
        "block_lr_decay": opts.block_lr_decay, "lr_schedule": opts.lr_schedule,
        "split": {k: int(len(v)) for k, v in source.rows.items()}, "report": opts.paths.report,
        **({"head_scores": source.head.scores} if source.head and source.head.scores else {}),
    }


def _score_test(opts, source: Source, maps: Maps, data, result: dict, say) -> dict:
    """The saved whole network's top scored once on the test maps, and the whole network on a
    sample of test images against its top on their cached maps."""
    from bottleneck.finetune.report import write_report

    if data.test is None:
        return {"test_accuracy": None}
    best = keras.saving.load_model(opts.paths.best, compile=False)
    probs = best.get_layer("top").predict(data.test, verbose=0)
    rows = source.rows["test"]
    y = maps.cache.labels[rows]
    image_check = _image_check(best, maps, source, rows, opts.check_samples)
    say(f"image check on {image_check['n']} test images: the saved network on the images "
        f"against its top on the cached maps, agreement {100 * image_check['agreement']:.2f}%, "
        f"max |prob diff| {image_check['max_abs_prob_diff']:.2e}")
    if image_check["agreement"] < 0.995:
        say("  WARNING: the saved network does not reproduce its top on the maps: were the maps "
            "taken from these images with these weights (float16 out of range?)")
    scores = write_report(opts.paths.report, y, probs, source.class_names, extra={
        k: result[k] for k in ("route", "head_kind", "transplant_agreement", "best_epoch",
                               "selected", "averaged", "initial", "model", "cut")},
        paths=[maps.cache.paths[i] for i in rows], data_dir=source.data_dir)
    say(f"test accuracy {scores['test_accuracy']:.4f} (best epoch {result['best_epoch']}; before "
        f"training {result['initial'].get('test_accuracy', float('nan')):.4f})")
    return {**scores, "image_check": image_check}


def _image_check(best, maps: Maps, source: Source, rows, n: int) -> dict:
    from bottleneck.backbones.network import compiled_forward
    from bottleneck.data.images import load_batch

    n = min(max(n, 1), len(rows))
    sample = np.unique(rows[np.linspace(0, len(rows) - 1, n).astype(int)])
    images, ok, bad = load_batch([os.path.join(source.data_dir, maps.cache.paths[r])
                                  for r in sample], source.provenance.image_size)
    if bad:
        raise UserError(f"cannot read {len(bad)} test image(s) under {source.data_dir}; pass "
                        "--data DIR")
    forward = compiled_forward(best)
    net = np.concatenate([forward(images[i:i + 32])[0].numpy()
                          for i in range(0, len(images), 32)])
    top = best.get_layer("top").predict(maps.cache.features(maps.layer, sample, flatten=False),
                                        verbose=0)
    return {"n": int(len(sample)), "agreement": float(np.mean(net.argmax(1) == top.argmax(1))),
            "max_abs_prob_diff": float(np.abs(net - top).max())}

"""Predictors: a saved model -> a callable images -> probabilities, with its class names and size.

`load_predictor(path)` dispatches on the file kind: a head (.joblib, stage 2) runs the backbone its
provenance names and the head on top; a fine-tuned network (.keras, stage 3) is loaded by
bottleneck.finetune.model (predict depends on finetune, never the reverse).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import replace
from functools import partial

import numpy as np

from bottleneck.predict.base import Predictor, head_features
from bottleneck.predict.inputs import load_inputs
from features.errors import UserError


def load_predictor(path: str, weights: str | None = None) -> Predictor:
    """A head or an ensemble (.joblib, stage 2) or a fine-tuned network (.keras, stage 3) as a
    Predictor."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".joblib":
        from features.ensembles.combination import is_ensemble_file

        if is_ensemble_file(path):
            from bottleneck.predict.ensemble import load_ensemble_predictor

            return load_ensemble_predictor(path, weights)
        return load_head_predictor(path, weights)
    if ext == ".keras":
        return load_keras_predictor(path)
    raise UserError(f"--model {path}: expected a head (.joblib) or a fine-tuned network (.keras)")


def load_keras_predictor(path: str) -> Predictor:
    """A network saved by `finetune` (every weight is in the file: no --weights needed)."""
    from bottleneck.finetune.model import batch_predictor, load_network

    network = load_network(path)
    return Predictor(kind="keras", path=path, class_names=network.class_names,
                     image_size=network.image_size, predict_images=batch_predictor(network),
                     info=network.origin)


def features_of(prov, weights: str | None = None):
    """(images -> the features `prov` reads (its taps, flattened and concatenated as a cache's
    `features(layers)`), the taps built): the network a cache or head was made with, rebuilt
    from its provenance (a local weights file must match the recorded sha256)."""
    from bottleneck.backbones.network import compiled_forward, feature_model_from_provenance

    model, taps = feature_model_from_provenance(prov, weights=weights, fold_bn=True)
    forward = compiled_forward(model)

    def features(images):
        outputs = [o.numpy() for o in forward(np.asarray(images, dtype=np.float32))]
        return head_features(outputs, prov)

    return features, taps


def load_feature_predictor(prov, weights: str | None = None) -> Predictor:
    """A Predictor whose `predict_images` gives features, not probabilities: images -> what a
    cache with provenance `prov` holds for them (`similar` queries its index with them)."""
    features, _ = features_of(prov, weights)
    return Predictor("features", prov.cache_path or "", list(prov.class_names), prov.image_size,
                     features, {"layer": prov.layer, "backbone": prov.backbone})


def load_head_predictor(path: str, weights: str | None = None) -> Predictor:
    from features.heads.headfile import check_head_current, check_head_matches, load_head

    bundle = load_head(path)
    check_head_current(bundle)
    prov = bundle["provenance"]
    features, taps = features_of(prov, weights)
    # the network must compute every layer the head reads
    check_head_matches(bundle, replace(prov, layers=tuple(name for name, _ in taps),
                                       feature_layers=None))
    pipeline = bundle["pipeline"]

    def predict_images(images):
        return pipeline.predict_proba(features(images))

    info = {"head": bundle["kind"], "layer": prov.layer, "backbone": prov.backbone,
            "provenance": prov.to_json()}
    if prov.weights == "none":
        info["warning"] = ("the head was fitted on features of a randomly initialised backbone "
                           "(weights none, seeded): fine for testing the route, not for real use")
    return Predictor("head", path, list(prov.class_names), prov.image_size,
                     predict_images, info)


def iter_inputs(inputs):
    """Image files named directly, or found (sorted, recursively, lazily) under folders; an
    image reached twice (overlapping folders, links) is listed once."""
    from bottleneck.data.images import WalkState, iter_images

    state = WalkState()   # the same walk as extract's, sharing what it saw across the inputs
    for item in inputs:
        if os.path.isdir(item):
            yield from iter_images(item, state)
        else:
            yield item   # missing or unreadable files are reported per image


def collect_images(inputs):
    """The images of `inputs` as a lazy iterator (nothing holds the whole list); inputs without
    a single image are refused before any work."""
    images = iter_inputs(inputs)
    first = next(images, None)
    if first is None:
        raise UserError(f"no images found in {', '.join(inputs)}")
    return itertools.chain([first], images)


def batches(items, size: int):
    """(index of the first item, list of up to `size` items) over any iterable, lazily."""
    items, start = iter(items), 0
    while chunk := list(itertools.islice(items, size)):
        yield start, chunk
        start += len(chunk)


def predict_paths(predictor: Predictor, paths, batch_size: int = 32, tta: int = 0, seed: int = 0):
    """Yield (path, probabilities or None, reason or None) for each path, in order; `paths` may
    be any iterable (read one batch at a time).

    With `tta` N, each image's probabilities are the mean over its plain view and N seeded
    augmented views (the same augmentation as `extract --views`)."""
    for start, chunk in batches(paths, batch_size):
        images, ok, bad = load_inputs(predictor, chunk)
        proba = predictor.predict_images(images) if len(ok) else np.zeros((0, 0))
        if tta and len(ok):
            views = _sized(predictor, partial(_views, [chunk[i] for i in ok],
                                              [start + i for i in ok], tta, seed))
            extra = predictor.predict_images(views).reshape(len(ok), tta, -1)
            proba = (proba + extra.sum(axis=1)) / (1 + tta)
        rows = {i: proba[j] for j, i in enumerate(ok)}
        reasons = dict(bad)
        for i, path in enumerate(chunk):
            yield path, rows.get(i), reasons.get(i)


def _views(paths, indices, tta: int, seed: int, size: int) -> np.ndarray:
    """The seeded augmented views of `paths` (their `indices` in the run) at `size`."""
    from bottleneck.data.images import load_views

    return np.concatenate([load_views(p, tta, size, seed, i) for p, i in zip(paths, indices)])


def _sized(predictor: Predictor, make):
    """make(size) for the predictor's one size, or {size: make(size)} for each of its sizes."""
    if not predictor.image_sizes:
        return make(predictor.image_size)
    return {size: make(size) for size in predictor.image_sizes}

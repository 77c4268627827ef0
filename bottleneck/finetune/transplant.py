"""A fitted head, as a layer spec, becomes the classifier on top of the feature network.

The spec (made by `features.heads.layer_spec.head_layer_spec`) is a list of numpy ops on the
flattened, concatenated cache features:

    {"op": "l2"}                                   x / max(||x||_2, 1e-12), row-wise
    {"op": "dense", "kernel": (d_in, d_out), "bias": (d_out,), "activation": linear|relu|softmax}

Scaling and PCA are already folded into the first dense kernel. Each op becomes one Keras layer
with the same float32 weights; the last softmax becomes `ClassProbabilities`, a softmax that also
carries the class names, so a saved model knows its labels without a sidecar file.

The network: image (float32 RGB 0..255) -> [augmentation, training only] -> feature model
(Preprocess -> body taps -> pooling) -> Flatten per tap (pool none) -> Concatenate (several taps)
-> head layers. Flatten of an (H, W, C) map is row-major, exactly like the cache's
`features(..., flatten=True)`; taps are concatenated in provenance order, like `feature_layers`.
"""

from __future__ import annotations

import json

import numpy as np

from bottleneck.data import augment_layers as _augment_layers  # noqa: F401  (registers them for load_model)
from features.errors import UserError
from features.tf import keras

EPS = 1e-12
ACTIVATIONS = ("linear", "relu", "softmax")
META_ENTRY = "bottleneck.json"   # in the .keras archive: class names and origin (plain data)


@keras.saving.register_keras_serializable(package="bottleneck")
class L2Normalize(keras.layers.Layer):
    """x / max(||x||_2, 1e-12) per row. New networks use the stock UnitNormalization; this
    stays registered so networks saved before still load."""

    def call(self, inputs):
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(inputs), axis=-1, keepdims=True))
        return inputs / keras.ops.maximum(norm, EPS)


@keras.saving.register_keras_serializable(package="bottleneck")
class ClassProbabilities(keras.layers.Layer):
    """Softmax that stored the class names in networks saved before they moved to the archive's
    META_ENTRY; stays registered so those networks still load."""

    def __init__(self, class_names=(), info: str = "{}", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.class_names = [str(c) for c in class_names]
        self.info = info

    def call(self, inputs):
        return keras.ops.softmax(keras.ops.cast(inputs, "float32"), axis=-1)

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names, "info": self.info}


def apply_spec(spec, X) -> np.ndarray:
    """The spec as numpy ops (float64), for checking:
    `features.heads.layer_spec.apply_layer_spec`, with a
    missing activation read as linear and an unknown op refused as a UserError."""
    from features.heads.layer_spec import apply_layer_spec

    try:
        return apply_layer_spec([{"activation": "linear", **op} if op.get("op") == "dense" else op
                                 for op in spec], X)
    except ValueError as exc:
        raise UserError(f"head spec: {exc}") from exc


def check_spec(spec, d_in: int, n_classes: int) -> None:
    """Refuse a spec that does not chain from `d_in` features to `n_classes` softmax outputs."""
    if not spec:
        raise UserError("the head spec is empty")
    width = d_in
    for i, op in enumerate(spec):
        if op.get("op") == "l2":
            continue
        if op.get("op") != "dense":
            raise UserError(f"head spec op #{i} {op.get('op')!r} cannot become a Keras layer")
        kernel = np.asarray(op["kernel"])
        if kernel.ndim != 2 or kernel.shape[0] != width or np.shape(op["bias"]) != kernel.shape[1:]:
            raise UserError(f"head spec dense #{i}: kernel {kernel.shape} does not follow {width} "
                            "inputs; the head was fitted on other features")
        if op.get("activation", "linear") not in ACTIVATIONS:
            raise UserError(f"head spec dense #{i}: activation {op['activation']!r} unsupported")
        width = kernel.shape[1]
    last = spec[-1]
    if last.get("op") != "dense" or last.get("activation") != "softmax" or width != n_classes:
        raise UserError(f"head spec must end in a softmax dense layer over {n_classes} classes")


def random_spec(d_in: int, n_classes: int, seed: int = 0) -> list[dict]:
    """The classic route's head: one Glorot-uniform Dense layer with softmax, zero bias."""
    rng = np.random.default_rng(seed)
    limit = np.sqrt(6.0 / (d_in + n_classes))
    return [{"op": "dense", "kernel": rng.uniform(-limit, limit, (d_in, n_classes)).astype("float32"),
             "bias": np.zeros(n_classes, "float32"), "activation": "softmax"}]


def head_layers(spec):
    """One stock Keras layer per spec op (weights set at build time); the softmax becomes two
    layers: a linear Dense and a float32 Softmax named `probabilities`."""
    layers = []
    n_dense = sum(op["op"] == "dense" for op in spec)
    k = 0
    for op in spec:
        if op["op"] == "l2":
            layers.append((keras.layers.UnitNormalization(axis=-1, name=f"head_l2_{len(layers)}"),
                           None))
            continue
        k += 1
        kernel = np.asarray(op["kernel"], "float32")
        bias = np.asarray(op["bias"], "float32")
        act = op.get("activation", "linear")
        dense = keras.layers.Dense(kernel.shape[1], activation="linear" if act == "softmax" else act,
                                   dtype="float32",
                                   name="head_logits" if k == n_dense else f"head_dense_{k}")
        layers.append((dense, [kernel, bias]))
        if act == "softmax":
            layers.append((keras.layers.Softmax(name="probabilities", dtype="float32"), None))
    return layers


def feature_vector(feature_model, x):
    """Flatten each tap (pool none) and concatenate several taps, in provenance order."""
    outs = feature_model(x)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    flat = [keras.layers.Flatten(name=f"flatten_{i}")(o) if len(o.shape) > 2 else o
            for i, o in enumerate(outs)]
    if len(flat) == 1:
        return flat[0]
    return keras.layers.Concatenate(name="concat_taps")(flat)


def build_network(feature_model, spec, class_names, *, augment=None, info=None):
    """image -> [augment] -> feature model -> flatten/concat -> head. Returns a keras Model."""
    image_shape = feature_model.inputs[0].shape[1:]
    inputs = keras.Input(image_shape, name="image", dtype="float32")
    x = inputs
    for layer in augment or []:
        x = layer(x)
    feats = feature_vector(feature_model, x)
    check_spec(spec, int(feats.shape[-1]), len(class_names))
    pending = []
    for layer, weights in head_layers(spec):
        feats = layer(feats)
        if weights is not None:
            pending.append((layer, weights))
    for layer, weights in pending:
        layer.set_weights(weights)
    network = keras.Model(inputs, feats, name="finetune")
    attach_meta(network, {"class_names": list(class_names), "info": info or {}})
    return network


def attach_meta(network, meta: dict) -> None:
    """Keep the class names and origin with the in-memory network (a JSON string: Keras does not
    track it), so `save_network` can write them into the archive."""
    network._bottleneck_meta = json.dumps(meta, default=str)


def save_network(network, path: str) -> None:
    """Save a .keras file atomically, with META_ENTRY added to the archive: stock layers only,
    so `keras.saving.load_model(path)` needs nothing of ours; our loader reads the names."""
    import zipfile

    from features.atomic import atomic_path

    with atomic_path(path) as tmp:
        network.save(tmp)
        meta = getattr(network, "_bottleneck_meta", None)
        if meta:
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(META_ENTRY, meta)


def read_meta(path: str) -> dict | None:
    """The META_ENTRY of a saved network, or None (a network saved before it existed)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(META_ENTRY))
    except (KeyError, zipfile.BadZipFile, OSError, ValueError):
        return None


def taps_model(network):
    """The nested `<backbone>_taps` body inside a built network."""
    features = network.get_layer("features")
    for layer in features.layers:
        if isinstance(layer, keras.Model) and layer.name.endswith("_taps"):
            return layer
    raise UserError("the network has no `<backbone>_taps` body; was it built by bottleneck?")


def class_info(network, path: str | None = None) -> tuple[list[str], dict]:
    """(class names, origin info) of a network: from its archive at `path` or its in-memory
    record, else (networks saved before) from its ClassProbabilities layer."""
    meta = read_meta(path) if path else None
    if meta is None and getattr(network, "_bottleneck_meta", None):
        meta = json.loads(network._bottleneck_meta)
    if meta is not None:
        return list(meta["class_names"]), dict(meta.get("info") or {})
    layer = network.get_layer("probabilities")
    if not hasattr(layer, "class_names"):
        raise UserError("the network carries no class names; was it saved by `finetune`?")
    return list(layer.class_names), json.loads(layer.info or "{}")


def inference_model(network):
    """The same layers (shared weights) without the augmentation layers: what is saved as the
    best checkpoint, exported and used by predict. Augmentation is identity at inference anyway,
    but its random ops would still be traced into a SavedModel/TFLite graph."""
    if not any(layer.name.startswith("aug_") for layer in network.layers):
        plain = keras.Model(network.inputs[0], network.outputs[0], name="finetune")   # uncompiled
        plain._bottleneck_meta = getattr(network, "_bottleneck_meta", None)
        return plain
    inputs = keras.Input(network.inputs[0].shape[1:], name="image", dtype="float32")
    outs = network.get_layer("features")(inputs)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    names = {layer.name for layer in network.layers}
    outs = [network.get_layer(f"flatten_{i}")(o) if f"flatten_{i}" in names else o
            for i, o in enumerate(outs)]
    x = network.get_layer("concat_taps")(outs) if "concat_taps" in names else outs[0]
    for layer in network.layers:
        if layer.name.startswith("head_") or layer.name == "probabilities":
            x = layer(x)
    plain = keras.Model(inputs, x, name="finetune")
    plain._bottleneck_meta = getattr(network, "_bottleneck_meta", None)
    return plain


def transplant_check(network, cache, rows, data_dir: str, reference, layers=None) -> dict:
    """Network probabilities on the images of `rows` against `reference(cached features)` of the
    same rows: the transplant is exact when they agree."""
    import os

    from bottleneck.backbones.network import compiled_forward
    from bottleneck.data.images import load_batch

    rows = np.sort(np.asarray(rows))
    if not len(rows):
        return {"n": 0, "agreement": None, "max_abs_prob_diff": None}
    size = network.inputs[0].shape[1]
    images, ok, bad = load_batch([os.path.join(data_dir, cache.paths[r]) for r in rows], size)
    if bad:
        raise UserError(f"cannot read {len(bad)} test image(s) under {data_dir} (e.g. "
                        f"{cache.paths[rows[bad[0][0]]]}: {bad[0][1]}); pass --data DIR")
    forward = compiled_forward(network)
    net = np.concatenate([forward(images[i:i + 32])[0].numpy() for i in range(0, len(images), 32)])
    ref = np.asarray(reference(cache.features(layers or cache.layers, rows)))
    agree = float(np.mean(net.argmax(1) == ref.argmax(1)))
    return {"n": int(len(rows)), "agreement": agree,
            "max_abs_prob_diff": float(np.abs(net - ref).max())}

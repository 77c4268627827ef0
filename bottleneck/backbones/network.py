"""The feature network: family preprocessing, the frozen body cut at its taps, and pooling.

The same builder serves `extract`, `predict` and `finetune`, so a tap is computed identically
everywhere: raw RGB in [0, 255] -> the family's preprocessing (as a stock layer) -> body up to the
tapped layers -> pooling.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager

from bottleneck.backbones.registry import (
    POOLS,
    PRECISIONS,
    Backbone,
    build_body,
    get_backbone,
    weights_id,
)
from features.cache.provenance import Provenance
from features.errors import UserError
from features.tf import keras


@keras.saving.register_keras_serializable(package="bottleneck")
class Preprocess(keras.layers.Layer):
    """Models saved before preprocessing became a stock layer hold this one: kept so they load.
    New networks use `preprocess_layer` instead."""

    def __init__(self, module: str, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.module = module

    def call(self, inputs):
        return getattr(keras.applications, self.module).preprocess_input(
            keras.ops.cast(inputs, "float32"))

    def get_config(self):
        return {**super().get_config(), "module": self.module}


def preprocess_layer(module: str, name: str = "preprocess"):
    """The family's own `keras.applications.<module>.preprocess_input` as one stock, frozen 1x1
    Conv2D, so a saved network loads with plain Keras and nothing of ours.

    Every family's preprocessing is a per-channel affine map, possibly with the channels reordered
    (caffe's RGB -> BGR). The map is read off Keras' own function on probe pixels, never
    re-implemented, and checked against it on random pixels before it is used.
    """
    import numpy as np

    fn = getattr(keras.applications, module).preprocess_input
    probes = np.vstack([np.zeros(3), 100.0 * np.eye(3)]).astype("float32")[:, None, None, :]
    out = np.asarray(fn(probes.copy()), dtype=np.float64)[:, 0, 0, :]
    bias, kernel = out[0], (out[1:] - out[0]) / 100.0          # y = x @ kernel + bias
    check = np.random.default_rng(0).uniform(0, 255, (4, 3, 3, 3)).astype("float32")
    want = np.asarray(fn(check.copy()), dtype=np.float64)
    if np.abs(check.astype(np.float64) @ kernel + bias - want).max() > 1e-4:
        raise UserError(f"{module}.preprocess_input is not a per-channel affine map; it cannot "
                        "become a stock layer")
    layer = keras.layers.Conv2D(3, 1, name=name, dtype="float32", trainable=False)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel.reshape(1, 1, 3, 3).astype("float32"), bias.astype("float32")])
    return layer


def pool_layer(pool: str, name: str):
    """A layer turning an (H, W, C) map into the cached feature for `pool`."""
    if pool == "avg":
        return keras.layers.GlobalAveragePooling2D(name=f"{name}_avg")
    if pool == "max":
        return keras.layers.GlobalMaxPooling2D(name=f"{name}_max")
    if pool == "avgmax":
        avg = keras.layers.GlobalAveragePooling2D(name=f"{name}_avg")
        mx = keras.layers.GlobalMaxPooling2D(name=f"{name}_max")
        concat = keras.layers.Concatenate(name=f"{name}_avgmax")
        return lambda x: concat([avg(x), mx(x)])
    if pool == "none":
        return lambda x: x
    raise UserError(f"--pool {pool!r}: choose one of {', '.join(POOLS)}")


def layer_index(body, spec, *, flag: str = "--layer", body_is: str = "the body") -> int:
    """Index into body.layers of `spec`: a layer name, or an integer index (negative allowed).

    An unknown name is refused with the closest names, an index out of range with the count."""
    names = [layer.name for layer in body.layers]
    spec = str(spec)
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not -len(names) <= index < len(names):
            raise UserError(f"{flag} {spec}: index out of range ({body_is} has {len(names)} "
                            "layers; see `python cli.py layers`)")
        return index % len(names)
    if spec in names:
        return names.index(spec)
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.4)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise UserError(f"{flag} {spec!r} is not a layer of {body_is}.{hint} "
                    "`python cli.py layers --backbone NAME` lists them.")


def resolve_layers(body, specs) -> list[tuple[str, int]]:
    """(name, index) for each --layer spec: a layer name, or an integer index (negative allowed)."""
    out = []
    for spec in specs:
        index = layer_index(body, spec, body_is="this backbone")
        if len(body.layers[index].output.shape) not in (2, 4):
            raise UserError(f"--layer {spec}: output shape {body.layers[index].output.shape} is "
                            "neither a feature map nor a vector")
        out.append((body.layers[index].name, index))
    return out


def default_layer_specs(row: Backbone) -> list[str]:
    return [row.default_layer] if row.default_layer else ["-1"]


@contextmanager
def precision_policy(precision: str):
    """Build layers under a mixed-precision policy ('float32' changes nothing)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{precision}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_feature_model(row: Backbone, *, weights, image_size: int, alpha, layer_specs, pool: str,
                        precision: str = "float32", fold_bn: bool = False):
    """(model, [(layer name, index)]): float32 RGB in [0, 255] -> one pooled float32 output per tap.

    `fold_bn` folds BatchNorm into the convolutions (inference only: extraction and prediction);
    only in float32, since a folded bias added in bfloat16/float16 loses the precision that Keras'
    float32 BatchNorm arithmetic keeps.
    """
    with precision_policy(precision):
        body = build_body(row, weights=weights, image_size=image_size, alpha=alpha)
        taps = resolve_layers(body, layer_specs)
        if fold_bn and precision == "float32":
            from bottleneck.backbones.fold import fold_batchnorm

            body = fold_batchnorm(body, keep=[name for name, _ in taps])
        cut = keras.Model(body.inputs, [body.get_layer(name).output for name, _ in taps],
                          name=f"{row.name}_taps")
        cut.trainable = False
        inputs = keras.Input((image_size, image_size, 3), name="image", dtype="float32")
        maps = cut(preprocess_layer(row.preprocess)(inputs))
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        outputs = []
        for (name, _), fmap in zip(taps, maps):
            pooled = pool_layer(pool, name)(fmap) if len(fmap.shape) == 4 else fmap
            outputs.append(keras.layers.Activation("linear", dtype="float32",
                                                   name=f"feat_{name}")(pooled))
    return keras.Model(inputs, outputs, name="features"), taps


def compiled_forward(model):
    """A traced inference function over any batch size (no per-call `predict` overhead or leak)."""
    from features.tf import tf
    shape = model.inputs[0].shape

    @tf.function(input_signature=[tf.TensorSpec((None, *shape[1:]), tf.float32)],
                 reduce_retracing=True)
    def forward(images):
        out = model(images, training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return forward


def feature_model_from_provenance(prov: Provenance, weights: str | None = None, precision=None,
                                  fold_bn: bool = False):
    """Rebuild the exact feature network a cache (or a head's provenance) was made with.

    A local weights file is found at `weights` or the recorded weights_path, and must match the
    recorded sha256. Returns (model, taps).
    """
    model, taps = build_feature_model(
        get_backbone(prov.backbone), weights=_recorded_weights(prov, weights),
        image_size=prov.image_size, alpha=prov.alpha,
        layer_specs=[str(i) for i in prov.layer_indices], pool=prov.pool,
        precision=precision or prov.precision or "float32", fold_bn=fold_bn)
    names = [name for name, _ in taps]
    if names != list(prov.layers):
        raise UserError(f"rebuilt taps {names} differ from the recorded {list(prov.layers)}; "
                        "the Keras version may have renamed layers")
    return model, taps


def _recorded_weights(prov: Provenance, weights: str | None) -> str | None:
    """What to load for `prov`'s weights id: None, 'imagenet', or a file whose sha256 matches."""
    import os

    if prov.weights in ("imagenet", "none"):
        return None if prov.weights == "none" else "imagenet"
    source = weights or prov.weights_path or ""
    if not os.path.isfile(source):
        raise UserError(f"the features were made with a local weights file "
                        f"({prov.weights[:19]}...) that is not at {source!r}; pass --weights PATH "
                        "to it")
    if weights_id(source) != prov.weights:
        raise UserError(f"--weights {source} is not the file the features were made with "
                        "(sha256 differs); pass the original file")
    return source

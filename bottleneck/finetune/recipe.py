"""The training recipe's pieces: which layers train, the optimizer, the loss, the learning rate.

BatchNormalization layers are never trainable: in Keras 3 a BN layer with trainable=False runs in
inference mode (moving statistics, no updates) even when the model is called with training=True.
The preprocessing layer is never trainable either. Layers below the unfreeze point stay frozen;
the unfreeze point is the one rule `bottleneck.backbones.stages.unfreeze_point` (the first weighted
layer of the top stage), which `advise` uses too.
"""

from __future__ import annotations

import numpy as np

from bottleneck.finetune.options import (
    OPTIMIZERS,
    SCHEDULES,
    choice_problem,
    refuse,
    smoothing_problem,
)
from bottleneck.finetune.transplant import taps_model
from features.errors import UserError
from features.tf import keras


def unfreeze_index(body, spec: str | None) -> int:
    """Index into body.layers from which layers train: `spec` (a name or index), else the first
    weighted layer of the body's top stage."""
    from bottleneck.backbones.network import layer_index
    from bottleneck.backbones.stages import unfreeze_point

    if spec is not None:
        return layer_index(body, spec, flag="--unfreeze-from", body_is="the body up to the tap")
    point = unfreeze_point(body, 1)
    return point[1] if point else max(1, int(len(body.layers) * 0.9))


def set_trainable(network, unfreeze: int | None) -> dict:
    """Freeze the whole body (None) or train body layers from `unfreeze` up, BatchNorm and the
    preprocessing excepted; the head always trains."""
    body = taps_model(network)
    features = network.get_layer("features")
    features.trainable = True
    for layer in features.layers:
        if layer.name == "preprocess":
            layer.trainable = False
    body.trainable = unfreeze is not None
    n_trainable = 0
    if unfreeze is not None:
        for i, layer in enumerate(body.layers):
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = i >= unfreeze and not is_bn
            n_trainable += bool(layer.trainable and layer.weights)
    return {"body_layers_trainable": n_trainable,
            "trainable_params": int(sum(np.prod(v.shape) for v in network.trainable_weights))}


class _ScaledSteps:
    """Discriminative learning rates: each variable's step uses lr x its scale (`lr_scales`,
    keyed by variable path, e.g. 'conv_dw_6/depthwise_kernel'; 1 when absent). Scaling the
    gradient instead would do nothing for Adam, which normalises it away."""

    def __init__(self, *args, lr_scales=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_scales = {str(k): float(v) for k, v in (lr_scales or {}).items()}

    def update_step(self, gradient, variable, learning_rate):
        # the backend may hand over its own variable: find the Keras one (and its path)
        path = getattr(variable, "path", None)
        if path is None:
            path = self._trainable_variables[self._get_variable_index(variable)].path
        scale = self.lr_scales.get(path, 1.0)
        if scale != 1.0:
            learning_rate = keras.ops.cast(learning_rate, variable.dtype) * scale
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "lr_scales": self.lr_scales}


@keras.saving.register_keras_serializable(package="bottleneck")
class BlockAdam(_ScaledSteps, keras.optimizers.Adam):
    """Adam with a learning-rate scale per variable (--block-lr-decay)."""


@keras.saving.register_keras_serializable(package="bottleneck")
class BlockSGD(_ScaledSteps, keras.optimizers.SGD):
    """SGD (momentum 0.9) with a learning-rate scale per variable (--block-lr-decay)."""


def make_optimizer(name: str, lr: float, lr_scales: dict | None = None):
    """The optimizer; with `lr_scales` (discriminative rates) its per-variable subclass."""
    if name not in OPTIMIZERS:
        raise UserError(choice_problem("--optimizer", name, OPTIMIZERS))
    kwargs = {"momentum": 0.9} if name == "sgd" else {}
    if lr_scales:
        cls = BlockSGD if name == "sgd" else BlockAdam
        return cls(learning_rate=lr, lr_scales=lr_scales, **kwargs)
    cls = keras.optimizers.SGD if name == "sgd" else keras.optimizers.Adam
    return cls(learning_rate=lr, **kwargs)


def block_lr_scales(layers, body, decay: float) -> dict[str, float]:
    """{variable path: decay**k} for the weights of `layers` that are layers of `body` (by
    name), k the number of stages between the layer's stage and the body's top stage (0 for the
    top stage, whose scale is 1, like the head's). Empty when decay is 1."""
    from bottleneck.backbones.stages import blocks

    if decay >= 1:
        return {}
    found = blocks(body)
    names = {layer.name: i for i, layer in enumerate(body.layers)}
    scales = {}
    for layer in layers:
        index = names.get(layer.name)
        if index is None:
            continue
        stage = next((k for k, (first, last) in enumerate(found) if first <= index <= last),
                     len(found) - 1)
        for variable in layer.weights:
            scales[variable.path] = float(decay ** (len(found) - 1 - stage))
    return scales


def schedule_lr(base: float, schedule: str, step: int, steps: int, warmup: int = 1) -> float:
    """Learning rate of fine-tune epoch `step` (0-based) of `steps`, set per epoch:
    constant; cosine: half a cosine from `base` down to base/100 at the last epoch (fewer noisy
    late epochs, a settled end); cosine-warmup: `warmup` epochs rising linearly from base/10,
    then that cosine over the rest; one-cycle: rising from base/25 to base over the first 30 %
    of the epochs, then down along a cosine to base/1e4 (Smith's one-cycle, per epoch)."""
    refuse(choice_problem("--lr-schedule", schedule, SCHEDULES))
    if schedule == "constant" or steps <= 1:
        return base
    if schedule == "cosine-warmup":
        warmup = min(max(0, warmup), steps - 1)
        if step < warmup:
            return base / 10 + (base - base / 10) * step / warmup
        return schedule_lr(base, "cosine", step - warmup, steps - warmup)
    if schedule == "one-cycle":
        peak = max(1, int(round(0.3 * steps)))
        if step < peak:
            return base / 25 + (base - base / 25) * step / peak
        return _cosine(base, base / 1e4, step - peak, steps - peak)
    return _cosine(base, base / 100, step, steps)


def _cosine(base: float, floor: float, step: int, steps: int) -> float:
    if steps <= 1:
        return base
    return floor + (base - floor) * 0.5 * (1 + np.cos(np.pi * step / (steps - 1)))


@keras.saving.register_keras_serializable(package="bottleneck")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy on integer labels with label smoothing (Keras' sparse loss has none): the
    target puts 1 - s on the true class plus s / n_classes on every class."""

    def __init__(self, smoothing=0.0, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        n = keras.ops.shape(y_pred)[-1]
        y = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), n)
        y = y * (1.0 - self.smoothing) + self.smoothing / keras.ops.cast(n, y.dtype)
        return keras.losses.categorical_crossentropy(y, y_pred)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing}


def make_loss(label_smoothing: float):
    refuse(smoothing_problem(label_smoothing))
    return (SmoothedSparseCrossentropy(label_smoothing) if label_smoothing
            else "sparse_categorical_crossentropy")


def compile_network(network, optimizer: str, lr: float, label_smoothing: float = 0.0,
                    lr_scales: dict | None = None):
    network.compile(optimizer=make_optimizer(optimizer, lr, lr_scales),
                    loss=make_loss(label_smoothing), metrics=["accuracy"])


def balanced_class_weight(labels) -> dict[int, float]:
    """{class: weight} inversely proportional to its frequency in `labels` (the train split)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)}

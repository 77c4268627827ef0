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


def make_optimizer(name: str, lr: float):
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    raise UserError(choice_problem("--optimizer", name, OPTIMIZERS))


def schedule_lr(base: float, schedule: str, step: int, steps: int) -> float:
    """Learning rate of fine-tune epoch `step` (0-based) of `steps`: constant, or half a cosine
    from `base` down to base/100 at the last epoch (fewer noisy late epochs, a settled end)."""
    refuse(choice_problem("--lr-schedule", schedule, SCHEDULES))
    if schedule == "constant" or steps <= 1:
        return base
    floor = base / 100
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


def compile_network(network, optimizer: str, lr: float, label_smoothing: float = 0.0):
    network.compile(optimizer=make_optimizer(optimizer, lr), loss=make_loss(label_smoothing),
                    metrics=["accuracy"])


def balanced_class_weight(labels) -> dict[int, float]:
    """{class: weight} inversely proportional to its frequency in `labels` (the train split)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)}

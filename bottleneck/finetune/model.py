"""A network saved by `finetune`, loaded back as images -> probabilities (for predict, export)."""

from __future__ import annotations

import os

import numpy as np

from features.errors import UserError


def load_finetuned(path: str):
    """(predict, class_names, image_size) for a model saved by `finetune`.

    `predict(images)` takes float32 RGB in [0, 255] of shape (N, image_size, image_size, 3)
    (decode with bottleneck.data.images.load_batch) and returns (N, n_classes) probabilities.
    """
    from bottleneck.backbones.network import compiled_forward
    from bottleneck.finetune.transplant import class_info, inference_model
    from features.tf import keras

    if not os.path.isfile(path):
        raise UserError(f"--model {path}: no such file; train one with `python cli.py finetune`")
    try:
        model = keras.saving.load_model(path, compile=False)
        class_names, _ = class_info(model)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path} is not a model saved by `finetune` ({type(exc).__name__})") from exc
    forward = compiled_forward(inference_model(model))
    size = int(model.inputs[0].shape[1])

    def predict(images):
        images = np.asarray(images, dtype=np.float32)
        if not len(images):
            return np.zeros((0, len(class_names)), np.float32)
        return np.concatenate([forward(images[i:i + 64])[0].numpy()
                               for i in range(0, len(images), 64)])

    return predict, class_names, size


def finetuned_info(path: str) -> dict:
    """What a saved network records of its origin (route, head kind, source head)."""
    from bottleneck.finetune.transplant import class_info
    from features.tf import keras

    _, info = class_info(keras.saving.load_model(path, compile=False))
    return {k: info.get(k) for k in ("route", "head_kind", "from_head")}

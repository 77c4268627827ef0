"""A network saved by `finetune`, loaded back: the one `.keras` loader predict and export use.

predict and export depend on this module; it imports nothing of theirs (no import cycle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from features.errors import UserError

ORIGIN_KEYS = ("route", "head_kind", "from_head")


@dataclass
class FinetunedNetwork:
    """A saved fine-tuned network ready for inference (augmentation layers left out)."""

    path: str
    model: object              # keras.Model: float32 RGB in [0, 255] -> probabilities
    class_names: list[str]
    info: dict                 # what the network records of its origin (route, head, provenance)

    @property
    def image_size(self) -> int:
        return int(self.model.inputs[0].shape[1])

    @property
    def origin(self) -> dict:
        """Route, head kind and source head: what predict reports about the model."""
        return {k: self.info.get(k) for k in ORIGIN_KEYS}


def load_network(path: str) -> FinetunedNetwork:
    """Load a `.keras` file written by `finetune`; a missing file or another kind of model is a
    one-line UserError naming the fix."""
    from bottleneck.finetune.transplant import class_info, inference_model
    from features.tf import keras

    if not os.path.isfile(path):
        raise UserError(f"--model {path}: no such file; train one with `python cli.py finetune`")
    try:
        model = keras.saving.load_model(path, compile=False)
        class_names, info = class_info(model, path)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path} is not a model saved by `finetune` ({type(exc).__name__})") from exc
    return FinetunedNetwork(path, inference_model(model), class_names, info)


def batch_predictor(network: FinetunedNetwork, batch: int = 64):
    """images (N, size, size, 3) float32 in [0, 255] -> (N, n_classes) probabilities, compiled
    once and run `batch` images at a time."""
    from bottleneck.backbones.network import compiled_forward

    forward = compiled_forward(network.model)
    n_classes = len(network.class_names)

    def predict(images):
        images = np.asarray(images, dtype=np.float32)
        if not len(images):
            return np.zeros((0, n_classes), np.float32)
        return np.concatenate([forward(images[i:i + batch])[0].numpy()
                               for i in range(0, len(images), batch)])

    return predict


def load_finetuned(path: str):
    """(predict, class_names, image_size) for a model saved by `finetune`.

    `predict(images)` takes float32 RGB in [0, 255] of shape (N, image_size, image_size, 3)
    (decode with bottleneck.data.images.load_batch) and returns (N, n_classes) probabilities.
    """
    network = load_network(path)
    return batch_predictor(network), network.class_names, network.image_size

"""Training-time augmentation as Keras layers (active only when the model is called in training).

They sit between the image input and the Preprocess layer, on float32 RGB in [0, 255], and are
identities at inference, so a saved or exported model predicts exactly like the plain network.
All are stock, serializable keras.layers.Random* layers (no Lambda).
"""

from __future__ import annotations

from dataclasses import dataclass

from features.errors import UserError
from features.tf import keras

FLIPS = ("horizontal", "vertical", "horizontal_and_vertical", "none")


@dataclass
class AugmentOptions:
    flip: str = "horizontal"
    rotation: float = 0.05      # fraction of a full turn (0.05 = +-18 degrees)
    shift: float = 0.1          # fraction of height/width
    zoom: float = 0.1           # fraction (+-)
    shear: float = 0.0          # shear factor (0 = off)
    color_jitter: float = 0.1   # brightness/contrast/saturation factor (0 = off)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@keras.saving.register_keras_serializable(package="bottleneck")
class SymmetricShear(keras.layers.RandomShear):
    """keras.layers.RandomShear whose config survives a save/load round trip (Keras 3.15 writes
    x_factor as [-f, f] and then refuses it on load); the symmetric factor is stored instead."""

    def __init__(self, factor=0.1, **kwargs):
        kwargs.pop("x_factor", None)
        kwargs.pop("y_factor", None)
        super().__init__(x_factor=factor, y_factor=factor, **kwargs)
        self.factor = factor

    def get_config(self):
        config = super().get_config()
        config.pop("x_factor", None)
        config.pop("y_factor", None)
        return {**config, "factor": self.factor}


def augmentation_layers(opts: AugmentOptions, seed: int = 0) -> list:
    from features.tf import keras
    if opts.flip not in FLIPS:
        raise UserError(f"--flip {opts.flip!r}: choose one of {', '.join(FLIPS)}")
    for name in ("rotation", "shift", "zoom", "shear", "color_jitter"):
        value = getattr(opts, name)
        if not 0 <= value < 1:
            raise UserError(f"--{name.replace('_', '-')} {value} must be in [0, 1)")
    layers = []
    if opts.flip != "none":
        layers.append(keras.layers.RandomFlip(opts.flip, seed=seed, name="aug_flip"))
    if opts.rotation:
        layers.append(keras.layers.RandomRotation(opts.rotation, fill_mode="reflect", seed=seed + 1,
                                                  name="aug_rotation"))
    if opts.shift:
        layers.append(keras.layers.RandomTranslation(opts.shift, opts.shift, fill_mode="reflect",
                                                     seed=seed + 2, name="aug_shift"))
    if opts.zoom:
        layers.append(keras.layers.RandomZoom(opts.zoom, fill_mode="reflect", seed=seed + 3,
                                              name="aug_zoom"))
    if opts.shear:
        layers.append(SymmetricShear(opts.shear, fill_mode="reflect", seed=seed + 4,
                                           name="aug_shear"))
    if opts.color_jitter:
        # separate stock layers with explicit ranges: keras' RandomColorJitter/RandomSaturation
        # read a single saturation factor f as "sample in [0, f]" with 0.5 the identity, so a
        # small jitter like 0.1 turned every training image nearly grey
        c = opts.color_jitter
        layers += [
            keras.layers.RandomBrightness(c, value_range=(0, 255), seed=seed + 5,
                                          name="aug_brightness"),
            keras.layers.RandomContrast(c, value_range=(0, 255), seed=seed + 6,
                                        name="aug_contrast"),
            keras.layers.RandomSaturation((0.5 - c / 2, 0.5 + c / 2), value_range=(0, 255),
                                          seed=seed + 7, name="aug_saturation"),
        ]
    return layers

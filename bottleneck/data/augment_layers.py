"""The recipe (bottleneck.data.augment.AugmentOptions) as Keras layers, for `finetune --augment`.

Active only when the model is called in training.

They sit between the image input and the Preprocess layer, on float32 RGB in [0, 255], and are
identities at inference, so a saved or exported model predicts exactly like the plain network.
All are stock, serializable keras.layers.Random* layers (no Lambda).
"""

from __future__ import annotations

from bottleneck.data.augment import AugmentOptions
from features.tf import keras


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
    """One stock Keras layer per part of the recipe that is on (crop_area is the views' only)."""
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
    return layers + _colour_layers(opts, seed)


def _colour_layers(opts: AugmentOptions, seed: int) -> list:
    """Separate stock layers with explicit ranges: keras' RandomColorJitter/RandomSaturation read a
    single saturation factor f as "sample in [0, f]" with 0.5 the identity, so a small jitter like
    0.1 turned every training image nearly grey."""
    out = []
    if opts.jitter("brightness"):
        out.append(keras.layers.RandomBrightness(opts.jitter("brightness"), value_range=(0, 255),
                                                 seed=seed + 5, name="aug_brightness"))
    if opts.jitter("contrast"):
        out.append(keras.layers.RandomContrast(opts.jitter("contrast"), value_range=(0, 255),
                                               seed=seed + 6, name="aug_contrast"))
    s = opts.jitter("saturation")
    if s:
        out.append(keras.layers.RandomSaturation((0.5 - s / 2, 0.5 + s / 2), value_range=(0, 255),
                                                 seed=seed + 7, name="aug_saturation"))
    return out

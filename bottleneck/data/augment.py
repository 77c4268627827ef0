"""Augmentation: one recipe, read by both places that augment images.

`AugmentOptions` is the recipe. Two renderers read it and nothing else:
* `augmented_views` (here): seeded, stateless TensorFlow ops for `extract --views K` and
  `predict --tta N`; each view is a pure function of (seed, image index, view number), so views do
  not depend on batching, resumption or the order of the work. It renders `VIEWS`.
* `bottleneck.data.augment_layers.augmentation_layers`: stock Keras layers inside the network for
  `finetune --augment`, active only in training.

Importing this module imports no TensorFlow (command-line parsers read FLIPS and the defaults).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from features.errors import UserError

FLIPS = ("horizontal", "vertical", "horizontal_and_vertical", "none")
CROP_ASPECT = (3 / 4, 4 / 3)   # aspect-ratio range of the random resized crop


@dataclass(frozen=True)
class AugmentOptions:
    """What may change in a training image. Fractions: rotation of a full turn, shift of the
    size, zoom and jitter factors (+-); crop_area is the smallest area a random resized crop keeps
    (1.0: no crop). brightness/contrast/saturation default to color_jitter."""

    flip: str = "horizontal"
    rotation: float = 0.05          # 0.05 = +-18 degrees
    shift: float = 0.1
    zoom: float = 0.1
    shear: float = 0.0
    color_jitter: float = 0.1
    crop_area: float = 1.0
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None

    def __post_init__(self):
        if self.flip not in FLIPS:
            raise UserError(f"--flip {self.flip!r}: choose one of {', '.join(FLIPS)}")
        for name in ("rotation", "shift", "zoom", "shear", "color_jitter", "brightness",
                     "contrast", "saturation"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise UserError(f"--{name.replace('_', '-')} {value} must be in [0, 1)")
        if not 0 < self.crop_area <= 1:
            raise UserError(f"crop_area {self.crop_area} must be in (0, 1]")

    def jitter(self, name: str) -> float:
        """The brightness, contrast or saturation factor (color_jitter unless set apart)."""
        value = getattr(self, name)
        return self.color_jitter if value is None else value

    def to_json(self) -> dict:
        return asdict(self)


# The views of `extract --views K` and `predict --tta N`: a random resized crop (half the area or
# more), a horizontal flip, +-10 degrees, and colour jitter; no shift, zoom or shear.
VIEWS = AugmentOptions(flip="horizontal", rotation=10 / 360, shift=0.0, zoom=0.0,
                       crop_area=0.5, brightness=0.15, contrast=0.2, saturation=0.2)


def augmented_views(image, index, seed: int, views: int, image_size: int,
                    recipe: AugmentOptions = VIEWS):
    """(views, S, S, 3) float32 in [0, 255]: seeded augmented views of one decoded image."""
    from features.tf import tf

    out = []
    for v in range(views):
        key = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64) * 1024 + v * 8])
        out.append(_one_view(image, key, image_size, recipe))
    return tf.stack(out)


def _one_view(image, key, image_size: int, recipe: AugmentOptions):
    from features.tf import tf

    def sub(k):
        return key + tf.constant([0, k], tf.int64)

    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4], tf.float32), seed=sub(0),
        min_object_covered=0.0, aspect_ratio_range=CROP_ASPECT,
        area_range=(recipe.crop_area, 1.0), use_image_if_no_bounding_boxes=True)
    x = tf.image.resize(tf.slice(image, begin, size), (image_size, image_size),
                        method="bilinear") / 255.0
    if recipe.flip != "horizontal":
        raise UserError(f"augmented views flip horizontally only, not {recipe.flip!r}")
    flip = tf.random.stateless_uniform([], sub(1)) < 0.5
    x = tf.where(flip, tf.image.flip_left_right(x), x)
    angle = tf.random.stateless_uniform([], sub(2), -1.0, 1.0) * (recipe.rotation * 360.0)
    x = _rotate(x, angle * math.pi / 180.0)
    x = tf.image.stateless_random_brightness(x, recipe.jitter("brightness"), sub(3))
    c, s = recipe.jitter("contrast"), recipe.jitter("saturation")
    x = tf.image.stateless_random_contrast(x, 1 - c, 1 + c, sub(4))
    x = tf.image.stateless_random_saturation(x, 1 - s, 1 + s, sub(5))
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def _rotate(image, radians):
    """Rotate an (S, S, 3) image about its centre, reflecting at the borders."""
    from features.tf import tf

    size = tf.cast(tf.shape(image)[0], tf.float32)
    c, s = tf.cos(radians), tf.sin(radians)
    centre = (size - 1) / 2
    # output (x, y) samples input (c*x - s*y + a, s*x + c*y + b), keeping the centre fixed
    a = centre - c * centre + s * centre
    b = centre - s * centre - c * centre
    transform = tf.stack([c, -s, a, s, c, b, 0.0, 0.0])[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")[0]

"""One row per keras.applications backbone: every fact the rest of the code needs about it.

The row is the single source of truth for a family's constructor, its `preprocess_input`, its
default input size, its default tap layer and its width multipliers, like timm's `pretrained_cfg`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import sys
import warnings
from dataclasses import dataclass, field

from features.errors import UserError

POOLS = ("avg", "max", "avgmax", "none")               # how a tapped map becomes a feature
PRECISIONS = ("float32", "bfloat16", "float16")       # compute precision of the forward pass


@dataclass(frozen=True)
class Backbone:
    name: str                 # our CLI name, e.g. "vgg16"
    constructor: str          # attribute of keras.applications, e.g. "VGG16"
    preprocess: str           # module of keras.applications whose preprocess_input applies
    default_size: int         # the ImageNet training resolution
    default_layer: str | None  # the last conv block; None: the body's output (auto-named layer)
    min_size: int = 32
    alphas: tuple[float, ...] = ()  # width multipliers the constructor accepts (empty: none)
    extra: dict = field(default_factory=dict)  # other constructor kwargs

    def resolve_alpha(self, alpha: float | None) -> float | None:
        """The width multiplier to build with: None for families without one (an --alpha other
        than 1 is refused there), else `alpha` (default 1.0) if the family offers it."""
        if not self.alphas:
            if alpha is not None and float(alpha) != 1.0:
                raise UserError(f"--alpha applies to width-multiplier families (mobilenet, "
                                f"mobilenetv2, mobilenetv3*); {self.name} has none: drop --alpha")
            return None
        alpha = 1.0 if alpha is None else float(alpha)
        if alpha not in self.alphas:
            raise UserError(f"--alpha {alpha:g} is not offered for {self.name}; choose one of "
                            f"{', '.join(f'{a:g}' for a in self.alphas)}")
        return alpha

    def build_kwargs(self, alpha: float | None) -> dict:
        kwargs = dict(self.extra)
        alpha = self.resolve_alpha(alpha)
        if alpha is not None:
            kwargs["alpha"] = alpha
        return kwargs


def _rows():
    rows = [
        Backbone("vgg16", "VGG16", "vgg16", 224, "block5_pool"),
        Backbone("vgg19", "VGG19", "vgg19", 224, "block5_pool"),
        Backbone("resnet50", "ResNet50", "resnet", 224, "conv5_block3_out"),
        Backbone("resnet101", "ResNet101", "resnet", 224, "conv5_block3_out"),
        Backbone("resnet152", "ResNet152", "resnet", 224, "conv5_block3_out"),
        Backbone("resnet50v2", "ResNet50V2", "resnet_v2", 224, "post_relu"),
        Backbone("resnet101v2", "ResNet101V2", "resnet_v2", 224, "post_relu"),
        Backbone("resnet152v2", "ResNet152V2", "resnet_v2", 224, "post_relu"),
        Backbone("inceptionv3", "InceptionV3", "inception_v3", 299, "mixed10", min_size=75),
        Backbone("inceptionresnetv2", "InceptionResNetV2", "inception_resnet_v2", 299,
                 "conv_7b_ac", min_size=75),
        Backbone("xception", "Xception", "xception", 299, "block14_sepconv2_act", min_size=71),
        Backbone("mobilenet", "MobileNet", "mobilenet", 224, "conv_pw_13_relu",
                 alphas=(0.25, 0.5, 0.75, 1.0)),
        Backbone("mobilenetv2", "MobileNetV2", "mobilenet_v2", 224, "out_relu",
                 alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
        Backbone("mobilenetv3small", "MobileNetV3Small", "mobilenet_v3", 224, None,
                 alphas=(0.75, 1.0)),
        Backbone("mobilenetv3large", "MobileNetV3Large", "mobilenet_v3", 224, None,
                 alphas=(0.75, 1.0)),
        Backbone("densenet121", "DenseNet121", "densenet", 224, "relu"),
        Backbone("densenet169", "DenseNet169", "densenet", 224, "relu"),
        Backbone("densenet201", "DenseNet201", "densenet", 224, "relu"),
        Backbone("nasnetmobile", "NASNetMobile", "nasnet", 224, None),
        Backbone("nasnetlarge", "NASNetLarge", "nasnet", 331, None),
    ]
    for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        rows.append(Backbone(f"efficientnetb{i}", f"EfficientNetB{i}", "efficientnet", size,
                             "top_activation"))
    for suffix, size in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384),
                         ("m", 480), ("l", 480)):
        rows.append(Backbone(f"efficientnetv2{suffix}", f"EfficientNetV2{suffix.upper()}",
                             "efficientnet_v2", size, "top_activation"))
    for size, ctor in (("tiny", "Tiny"), ("small", "Small"), ("base", "Base"), ("large", "Large"),
                       ("xlarge", "XLarge")):
        rows.append(Backbone(f"convnext{size}", f"ConvNeXt{ctor}", "convnext", 224, None))
    return {row.name: row for row in rows}


BACKBONES: dict[str, Backbone] = _rows()


def get_backbone(name: str) -> Backbone:
    """The registry row for `name` (case and punctuation insensitive), or a UserError naming close ones."""
    key = name.lower().replace("_", "").replace("-", "")
    if key in BACKBONES:
        return BACKBONES[key]
    close = difflib.get_close_matches(key, BACKBONES, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UserError(f"unknown backbone {name!r}.{hint} `python cli.py backbones` lists them all.")


def preprocess_fn(row: Backbone):
    """The family's own keras `preprocess_input` (never re-implemented here)."""
    from features.tf import keras
    return getattr(keras.applications, row.preprocess).preprocess_input


def weights_id(weights: str | None) -> str:
    """How a cache names its weights: 'imagenet', 'none', or 'sha256:<hex>' of a local file."""
    if weights in (None, "none"):
        return "none"
    if weights == "imagenet":
        return "imagenet"
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def check_weights_arg(weights: str) -> str | None:
    """Normalise --weights: 'imagenet', None for 'none', or an existing file path."""
    if weights in ("imagenet", "none", None):
        return None if weights in ("none", None) else "imagenet"
    if not os.path.isfile(weights):
        raise UserError(f"--weights {weights!r}: no such file; pass imagenet, none, or a path to a "
                        "Keras weights file (.h5 / .weights.h5)")
    return weights


def build_body(row: Backbone, *, weights: str | None, image_size: int, alpha: float | None = None):
    """The frozen no-top convolutional body of `row` at `image_size`, with `weights` loaded.

    Raises UserError for a bad alpha or size, and for ImageNet weights that cannot be fetched.
    """
    from features.tf import keras
    if image_size < row.min_size:
        raise UserError(f"--image-size {image_size} is below {row.name}'s minimum of "
                        f"{row.min_size} px")
    constructor = getattr(keras.applications, row.constructor)
    kwargs = row.build_kwargs(alpha)
    if row.name.startswith("nasnet") and weights == "imagenet" and image_size != row.default_size:
        raise UserError(f"{row.name} ImageNet weights need --image-size {row.default_size}")
    if weights is None:
        keras.utils.set_random_seed(0)  # random init is reproducible: resumes and rebuilds agree
    try:
        # Keras prints download progress to stdout (which --json keeps for JSON) and warns when
        # ImageNet weights made at 224 px are loaded at another size (convolutions do not care)
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input_shape.*", category=UserWarning)
            body = constructor(include_top=False, weights=weights,
                               input_shape=(image_size, image_size, 3), **kwargs)
    except ValueError as exc:
        raise UserError(f"{row.name}: {exc}".splitlines()[0]) from exc
    except Exception as exc:  # offline download, corrupt or mismatched weights file
        if weights == "imagenet":
            raise WeightsUnavailable(
                f"could not fetch ImageNet weights for {row.name} ({type(exc).__name__}); "
                "offline? pass --weights PATH to a local Keras weights file, or --weights none"
            ) from exc
        raise UserError(f"could not load --weights {weights!r} into {row.name}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    body.trainable = False
    return body


class WeightsUnavailable(UserError):
    """ImageNet weights could not be downloaded (no network); `demo` falls back to random init."""

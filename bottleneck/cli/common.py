"""What several commands share: the backbone flags, and typed options built from parsed flags."""

from __future__ import annotations

import dataclasses


def add_backbone_args(parser, *, weights_default="imagenet"):
    parser.add_argument("--backbone", default="vgg16",
                        help="keras.applications family (default vgg16; `backbones` lists all)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="width multiplier for mobilenet/mobilenetv2/mobilenetv3* (default 1.0)")
    parser.add_argument("--weights", default=weights_default,
                        help="imagenet (downloads once), none (random init), or a path to a local "
                             "Keras weights file (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=None, metavar="N",
                        help="square input size in pixels (default: the backbone's own, e.g. 224)")


def add_cache_args(parser, layer_help: str) -> None:
    """--features and --layer: the cache a command reads, and which of its layers."""
    parser.add_argument("--features", default=None, metavar="FILE.h5",
                        help="feature cache from `extract` (default: the newest under features/)")
    parser.add_argument("--layer", default=None, metavar="NAME", help=layer_help)


def options_from_args(cls, args, **overrides):
    """`cls(...)` from the parsed flags whose names are its fields, plus `overrides`: the flags
    and the dataclass are the two lists of names, and nothing copies one into the other by hand."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **overrides})

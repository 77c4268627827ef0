"""Flags shared by several commands, defined once."""

from __future__ import annotations

import os


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


def fmt_mb(path: str) -> str:
    return f"{os.path.getsize(path) / 2**20:.2f} MB"

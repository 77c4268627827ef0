"""`demo`: the whole route on a generated image set, to see the tool work in one command."""

from __future__ import annotations

import os

from ..errors import UserError
from ..extract import ExtractOptions, run_extract
from ..registry import WeightsUnavailable
from ..synthetic import PATTERNS, make_image_folder
from .extract import say_summary


def add_parser(sub):
    p = sub.add_parser("demo", help="generate a small labelled image set and run every stage on it",
                       description="Draw a small labelled image set (stripes, checks, rings, dots), "
                                   "extract MobileNet features (ImageNet weights when they can be "
                                   "downloaded, random init otherwise) and run the later stages.")
    p.add_argument("--dir", default="demo", help="where the images, cache and heads go (default demo/)")
    p.add_argument("--n-per-class", type=int, default=40, help="images per class (default 40)")
    p.add_argument("--image-size", type=int, default=96, help="pixels (default 96)")
    return p


def run(args, say):
    images = os.path.join(args.dir, "images")
    if not os.path.isdir(images):
        make_image_folder(images, n_per_class=args.n_per_class, size=args.image_size)
    say(f"demo: {len(PATTERNS)} classes x {args.n_per_class} drawn images in {images}/")
    opts = dict(data=images, backbone="mobilenet", alpha=0.25, image_size=args.image_size,
                pool="avgmax", out=os.path.join(args.dir, "features.h5"), overwrite=True,
                progress=not args.json)
    try:
        extracted = run_extract(ExtractOptions(weights="imagenet", **opts), say=say)
    except WeightsUnavailable:
        say("notice: ImageNet weights cannot be downloaded here (offline?); using random init")
        extracted = run_extract(ExtractOptions(weights="none", **opts), say=say)
    if not extracted.get("already_complete"):
        say_summary(extracted, say)
    result = {"extract": extracted}
    for stage in _later_stages():
        result.update(stage(args, extracted["path"], say))
    return result


def _later_stages():
    """Stages that exist beyond extract, run on the demo's cache (none yet raise UserError)."""
    stages = []
    try:
        from .fit import demo_stage
        stages.append(demo_stage)
    except ImportError:
        pass
    return stages


__all__ = ["run", "add_parser", "UserError"]

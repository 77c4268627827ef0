"""`demo`: `run` on a generated image set, to see every stage work in one command."""

from __future__ import annotations

import os

from bottleneck.backbones.registry import WeightsUnavailable, build_body, get_backbone
from bottleneck.data.synthetic import PATTERNS, make_image_folder


def add_parser(sub):
    p = sub.add_parser("demo", help="generate a small labelled image set and `run` every stage on it",
                       description="Draw a small labelled image set (stripes, checks, rings, dots) "
                                   "and run the whole route on it (`run`): advise, extract "
                                   "MobileNet (alpha 0.25) features, fit every head, fine-tune "
                                   "briefly, and write a report. Uses ImageNet weights when they "
                                   "can be downloaded, random initialisation otherwise.")
    p.add_argument("--dir", default="demo", help="where everything goes (default demo/)")
    p.add_argument("--n-per-class", type=int, default=40, help="images per class (default 40)")
    p.add_argument("--image-size", type=int, default=96, help="pixels (default 96)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    return p


def run(args, say):
    from bottleneck.cli.run import _cli

    images = os.path.join(args.dir, "images")
    if not os.path.isdir(images):
        make_image_folder(images, n_per_class=args.n_per_class, size=args.image_size)
    say(f"demo: {len(PATTERNS)} classes x {args.n_per_class} drawn images in {images}/")
    weights = "imagenet"
    try:
        build_body(get_backbone("mobilenet"), weights="imagenet", image_size=args.image_size,
                   alpha=0.25)
    except WeightsUnavailable:
        say("notice: ImageNet weights cannot be downloaded here (offline?); using random init")
        weights = "none"
    return _cli(["run", "--data", images, "--backbone", "mobilenet", "--alpha", "0.25",
                 "--weights", weights, "--image-size", args.image_size, "--out-dir", args.dir,
                 "--sweep", "--finetune", "yes", "--epochs", args.epochs], say)

"""`advise`: recommend a route (the work is in bottleneck/explore/advise.py)."""

from __future__ import annotations

from bottleneck.cli.common import options_from_args


def add_parser(sub):
    p = sub.add_parser(
        "advise", help="recommend a route (layer, fine-tuning, class weights, size) for a dataset",
        description="Count the images per class, measure the imbalance and the image sizes (PIL "
                    "headers of a sample), read a sweep's probe scores when given, and recommend: "
                    "bottleneck features + a linear head for small sets (< 1000 images), which "
                    "layer (the sweep's best; else the backbone's default), whether fine-tuning "
                    "is worth its time and from which block to unfreeze, --class-weight balanced "
                    "for imbalance >= 1.5, and an image size that does not upscale small images. "
                    "The rules and their sources are in README.md (advise).")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="class-per-folder tree (default: the sweep's or the cache's data folder)")
    p.add_argument("--sweep", default=None, metavar="DIR/sweep.json",
                   help="a sweep result (sweep.json, or the folder holding it)")
    p.add_argument("--features", default=None, metavar="FILE.h5",
                   help="a feature cache: its backbone, and a quick probe of its layers when no "
                        "sweep is given")
    p.add_argument("--backbone", default=None,
                   help="backbone to advise for (default: the sweep's or cache's, else vgg16)")
    p.add_argument("--alpha", type=float, default=None, help="width multiplier (mobilenet*)")
    return p


def run(args, say):
    from bottleneck.explore.advise import AdviseOptions, advise

    return advise(options_from_args(AdviseOptions, args), say)

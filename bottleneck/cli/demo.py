"""`demo`: `run` on a generated image set (the work is in bottleneck/route/run.py)."""

from __future__ import annotations

from bottleneck.cli.common import options_from_args


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
    from bottleneck.route.run import DemoOptions, demo

    return demo(options_from_args(DemoOptions, args), say)

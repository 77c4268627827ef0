"""`run`: the whole route in one command (the work is in bottleneck/route/run.py)."""

from __future__ import annotations

from bottleneck.cli.common import add_backbone_args, options_from_args


def add_parser(sub):
    p = sub.add_parser(
        "run", help="the whole route: advise, extract, fit, finetune where advised, one report",
        description="Run every stage on an image folder: `advise` picks the layer, image size, "
                    "class weighting and whether fine-tuning is worth it; `extract` caches the "
                    "features; `fit` tries every head; `finetune` (when advised or forced) "
                    "transplants the best head and trains end to end. Writes report.md and a "
                    "self-contained report.html that put the stages side by side.")
    p.add_argument("--data", required=True, metavar="DIR", help="class-per-folder image tree")
    add_backbone_args(p)
    p.add_argument("--out-dir", default="run", metavar="DIR",
                   help="where the cache, heads, model and reports go (default run/)")
    p.add_argument("--sweep", action="store_true",
                   help="sweep the backbone's stages first and let the probe choose the layer")
    p.add_argument("--finetune", choices=("auto", "yes", "no"), default="auto",
                   help="fine-tune when advise says so (auto), always, or never (default auto)")
    p.add_argument("--finetune-route", choices=("auto", "cache", "images"), default="auto",
                   help="auto (default): as advise says (the cache route when the maps at the "
                        "cut are reused and fit the disk); cache: extract the body's map at the "
                        "cut and train the layers above it on the maps (`finetune "
                        "--from-cache`); images: train on the images")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default 5)")
    p.add_argument("--heads", default=None, help="head kinds for `fit` (default: fit's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of split, CV and training")
    return p


def run(args, say):
    from bottleneck.route.run import RunOptions, run_route

    return run_route(options_from_args(RunOptions, args), say)

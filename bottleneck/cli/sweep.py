"""`sweep`: which layer to use (the work is in bottleneck/explore/sweep.py)."""

from __future__ import annotations

from bottleneck.cli.common import add_backbone_args, options_from_args
from bottleneck.cli.extract import add_split_args
from features.heads.probe import C_GRID

HELP = """Tap the end of every stage of a backbone (for each spatial size of its feature maps, the
last layer at that size) in ONE forward pass over the images, cache them all in one HDF5 file,
then score each layer with a quick cross-validated linear probe (StandardScaler +
LogisticRegression, C in {grid}, StratifiedKFold) on the TRAIN split only. Prints a table, writes
sweep.json, sweep.csv and sweep.png (CV accuracy against depth) to --out-dir, names the best layer
and the exact `extract` command that uses it. ImageNet features are most specific to ImageNet at
the top: data unlike ImageNet (X-ray, microscopy, satellite, textures, colour-coded classes)
usually prefers a lower layer, which is what the sweep tells you."""


def add_parser(sub):
    p = sub.add_parser("sweep", help="rank a backbone's stages by a linear probe: which layer to use",
                       description=HELP.format(grid=", ".join(f"{c:g}" for c in C_GRID)))
    p.add_argument("--data", required=True, metavar="DIR",
                   help="class-per-folder tree, as for extract")
    add_backbone_args(p)
    p.add_argument("--layer", action="append", dest="layers", default=[], metavar="NAME",
                   help="layer to probe, by name or index; repeat for several (default: the end "
                        "of every stage)")
    p.add_argument("--out-dir", default="sweep", metavar="DIR",
                   help="where the cache, sweep.json, sweep.csv and sweep.png go (default sweep/)")
    p.add_argument("--folds", type=int, default=5,
                   help="cross-validation folds of the probe (fewer if a class has fewer training "
                        "images; default 5)")
    p.add_argument("--max-probe", type=int, default=5000, metavar="N",
                   help="probe at most N training images (stratified sample; default 5000)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add_split_args(p, test_help="held-out test fraction of the cache's split (default 0.2; never "
                                "probed)",
                   val_help="validation fraction of the cache's split (default 0.1; never probed)",
                   seed_help="seed of the split and of the probe's folds (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="re-extract even if the sweep's cache exists")
    return p


def run(args, say):
    from bottleneck.explore.sweep import SweepOptions, sweep

    return sweep(options_from_args(SweepOptions, args, layers=tuple(args.layers),
                                   progress=not args.json), say)

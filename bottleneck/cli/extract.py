"""`extract`: cache a frozen backbone's features for an image folder (stage 1)."""

from __future__ import annotations

from bottleneck.backbones.network import POOLS, PRECISIONS
from bottleneck.cli.common import add_backbone_args
from bottleneck.extract import ExtractOptions, run_extract


def add_parser(sub):
    p = sub.add_parser(
        "extract", help="run a frozen backbone over an image folder; cache features in HDF5",
        description="Run the frozen convolutional body of a keras.applications backbone once over "
                    "a class-per-folder image tree and cache pooled (or full) feature maps of one "
                    "or more layers in an HDF5 file, with labels, paths and a stratified split. "
                    "Interrupted runs resume when re-run with the same flags.")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="class-per-folder tree (DIR/<class>/*.jpg), or one already split into "
                        "DIR/train, DIR/val, DIR/test")
    add_backbone_args(p)
    p.add_argument("--layer", action="append", dest="layers", default=[], metavar="NAME",
                   help="layer to tap, by name or index; repeat for several taps in one forward "
                        "pass (default: the last conv block, e.g. block5_pool for vgg16)")
    p.add_argument("--pool", choices=POOLS, default="avg",
                   help="global pooling of each tapped map; 'none' keeps the full map (default avg)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--test-size", type=float, default=0.2,
                   help="fraction of images held out for the final test score (default 0.2)")
    p.add_argument("--val-size", type=float, default=0.1,
                   help="fraction used for early stopping by fit-mlp/finetune (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="compute precision: bfloat16 on AVX-512 CPUs or float16 on GPUs is faster; "
                        "features are stored as float32 (default float32)")
    p.add_argument("--views", type=int, default=0, metavar="K",
                   help="also store K augmented views per image (random resized crop, flip, small "
                        "rotation, colour jitter; seeded by --seed) so heads can train on "
                        "augmented data; costs K extra forward passes per image (default 0)")
    p.add_argument("--out", default=None, metavar="FILE.h5",
                   help="cache file (default features/<data>_<backbone>[-a<alpha>]_<layer or Nlayers>"
                        "_<pool>_<size>.h5)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing cache or interrupted run made with other settings")
    return p


def run(args, say):
    result = run_extract(ExtractOptions(
        data=args.data, backbone=args.backbone, alpha=args.alpha, weights=args.weights,
        layers=tuple(args.layers), pool=args.pool, image_size=args.image_size,
        batch_size=args.batch_size, test_size=args.test_size, val_size=args.val_size,
        seed=args.seed, out=args.out, overwrite=args.overwrite, precision=args.precision,
        views=args.views,
        progress=not args.json), say=say)
    if not result.get("already_complete"):
        say_summary(result, say)
    return result


def say_summary(result: dict, say):
    dims = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in result["features"].items())
    say(f"extracted {result['n_images']} images ({result['n_computed']} computed now"
        f"{', resumed' if result['resumed'] else ''}) in {result['seconds']:.1f} s "
        f"({result['images_per_second'] or 0:.1f} img/s) -> {result['path']} "
        f"({result['file_mb']:.2f} MB)")
    say(f"  {result['backbone']} weights={result['weights']} size={result['image_size']} "
        f"pool={result['pool']}: {dims}"
        + (f" (+{result['views']} augmented views each)" if result.get("views") else ""))
    say(f"  split: {result['split']}; classes: {', '.join(result['classes'])}")
    if result["n_skipped"]:
        say(f"  skipped {result['n_skipped']} unreadable image(s):")
        for item in result["skipped"][:20]:
            say(f"    {item['path']}: {item['reason']}")
        if result["n_skipped"] > 20:
            say(f"    ... and {result['n_skipped'] - 20} more (`python cli.py info` lists all)")

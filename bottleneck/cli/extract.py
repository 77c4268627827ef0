"""`extract`: cache a frozen backbone's features for an image folder (stage 1)."""

from __future__ import annotations

import os

from bottleneck.backbones.registry import POOLS, PRECISIONS
from bottleneck.cli.common import add_backbone_args, options_from_args
from features.errors import UserError

DEFAULT_DATA = "data"


def add_parser(sub):
    p = sub.add_parser(
        "extract", help="run a frozen backbone over an image folder; cache features in HDF5",
        description="Run the frozen convolutional body of a keras.applications backbone once over "
                    "a class-per-folder image tree and cache pooled (or full) feature maps of one "
                    "or more layers in an HDF5 file, with labels, paths and a stratified split. "
                    "Interrupted runs resume when re-run with the same flags.")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="class-per-folder tree (DIR/<class>/*.jpg), or one already split into "
                        "DIR/train, DIR/val, DIR/test (default ./data when it exists)")
    add_backbone_args(p)
    p.add_argument("--layer", action="append", dest="layers", default=[], metavar="NAME",
                   help="layer to tap, by name or index; repeat for several taps in one forward "
                        "pass (default: the last conv block, e.g. block5_pool for vgg16)")
    p.add_argument("--pool", choices=POOLS, default="avg",
                   help="global pooling of each tapped map; 'none' keeps the full map (default avg)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add_split_args(p, val_help="fraction used for early stopping by fit-mlp/finetune (default 0.1)",
                   test_help="fraction of images held out for the final test score (default 0.2)",
                   seed_help="seed of the stratified split (default 0)")
    _add_precision_and_storage(p)
    p.add_argument("--views", type=int, default=0, metavar="K",
                   help="also store K augmented views per image (random resized crop, flip, small "
                        "rotation, colour jitter; seeded by --seed) so heads can train on "
                        "augmented data; costs K extra forward passes per image (default 0)")
    p.add_argument("--devices", default=None, metavar="N|all",
                   help="devices to extract on, one worker process each: 'all' (default) is every "
                        "GPU TensorFlow sees, else the CPU in this process; without GPUs N > 1 runs "
                        "N CPU workers, each pinned to its share of the cores")
    p.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help="images per shard, the unit a worker computes and a resume keeps "
                        "(default: about four shards per worker, at most 32 batches each)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="'local': this machine's devices (default); 'ray': Ray Data, decoding on "
                        "CPU workers and one featurizer actor per GPU (pip install -e '.[ray]')")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (e.g. ray://head:10001 or "
                        "auto); default: start a local Ray on this machine")
    p.add_argument("--exclude", default=None, metavar="FILE",
                   help="leave out the images listed in FILE (one path a line, relative to "
                        "--data; `audit` writes one); on an existing cache they are removed "
                        "like deleted images")
    p.add_argument("--dedupe-split", default=None, metavar="GROUPS.json",
                   help="split so that each near-duplicate group `audit` found (its groups.json) "
                        "lands in one split: a split of its own, recorded beside the folder's "
                        "plain one; use a new --out (or --overwrite)")
    p.add_argument("--out", default=None, metavar="FILE.h5",
                   help="cache file (default features/<data>_<backbone>[-a<alpha>]_<layer or Nlayers>"
                        "_<pool>_<size>.h5)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing cache or interrupted run made with other settings "
                        "(the old cache stays until the new one is complete)")
    return p


def add_split_args(p, *, test_help: str, val_help: str, seed_help: str):
    """The split flags extract and sweep share (each says what the split is for there)."""
    p.add_argument("--test-size", type=float, default=0.2, help=test_help)
    p.add_argument("--val-size", type=float, default=0.1, help=val_help)
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--split-from", default=None, metavar="CACHE.h5",
                   help="split the images as CACHE.h5 does (with its seed and fractions), instead "
                        "of by the folder's split record DIR/.bottleneck/split_*.json, which every "
                        "cache of a folder shares by default: for caches made before the record, "
                        "or to match a cache of another folder")


def run(args, say):
    from bottleneck.extract import (
        ExtractOptions,
        plan_extraction,
        plan_summary,
        run_extract,
        say_plan,
        say_summary,
    )

    opts = options_from_args(ExtractOptions, args, data=data_folder(args.data, say),
                             layers=tuple(args.layers), progress=not args.json)
    if args.plan:
        summary = plan_summary(plan_extraction(opts, say))
        say_plan(summary, say)
        return summary
    result = run_extract(opts, say=say)
    if not result.get("already_complete"):
        say_summary(result, say)
    return result


def data_folder(data: str | None, say) -> str:
    """--data, else ./data when this folder has one."""
    if data is not None:
        return data
    if not os.path.isdir(DEFAULT_DATA):
        raise UserError(f"no --data given and no ./{DEFAULT_DATA} folder here; pass --data DIR "
                        "(a class-per-folder image tree, DIR/<class>/*.jpg)")
    say(f"data: ./{DEFAULT_DATA} (no --data given)")
    return DEFAULT_DATA


def _add_precision_and_storage(p) -> None:
    """--precision (how the forward pass computes), --storage (how features are kept), --plan."""
    p.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="compute precision of the forward pass: 'auto' (default) measures float32 "
                        "against bfloat16 (float16 on a GPU) on this machine with a short probe "
                        "and uses the reduced precision only where it measured faster, saying "
                        "which it picked; a cache being grown or resumed keeps its own. How the "
                        "features are stored is --storage")
    p.add_argument("--storage", choices=("float32", "float16"), default="float32",
                   help="how features are stored: float16 halves the file (about 3 significant "
                        "digits, recorded in the cache; readers get float32). Per image and view: "
                        "a pooled 256-d feature is 1 KB in float32; a whole map H x W x C is "
                        "4*H*W*C bytes (14x14x256: 200 KB; 28x28x64: 200 KB) or half that in "
                        "float16; `--plan` prints the table for your flags (default float32)")
    p.add_argument("--plan", action="store_true",
                   help="print the size per image per layer, the total and the free disk for "
                        "these flags, and stop (nothing is computed or written)")

"""`similar`: the nearest cached images to new images (bottleneck/predict/similar.py)."""

from __future__ import annotations

from bottleneck.cli.common import add_cache_args, options_from_args


def add_parser(sub):
    p = sub.add_parser(
        "similar", help="find the cached images most like new images (cosine, by features)",
        description="Run each image through the network the cache was made with (rebuilt from "
                    "its provenance: same backbone, weights, layer, pooling, preprocessing) and "
                    "list the k cached images with the most similar features (cosine in the "
                    "audit's space, README). The faiss index is built on first use beside the "
                    "cache and rebuilt when the cache grows. Needs the audit extra: pip install "
                    "'bottleneck-transfer[audit]'.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders")
    add_cache_args(p, "cached layer (or NAME,NAME / all) to compare by (default: the only "
                      "layer, or all)")
    p.add_argument("-k", type=int, default=10, help="neighbours per image (default 10)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the local backbone weights file, when it moved since extraction")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    return p


def say_query(row: dict, say) -> None:
    if row.get("error"):
        say(f"{row['query']}: cannot read ({row['error']})")
        return
    say(f"{row['query']}:")
    for n in row["neighbours"]:
        say(f"  {n['rank']:>3}  {n['similarity']:.4f}  {n['class']} ({n['split']})  {n['path']}")


def run(args, say):
    from bottleneck.predict.similar import SimilarOptions, find_similar

    opts = options_from_args(SimilarOptions, args, inputs=tuple(args.inputs))
    result = find_similar(opts, say, on_query=lambda row: say_query(row, say))
    say(f"{len(result['queries']) - result['n_failed']} image(s) against {result['index_rows']} "
        f"cached rows of {result['features']}"
        + (f"; {result['n_failed']} unreadable" if result["n_failed"] else ""))
    return result

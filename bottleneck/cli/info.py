"""`info`: print what a feature cache holds."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("info", help="describe a feature cache (.h5)",
                       description="Print the provenance, shapes, split and skipped images of a "
                                   "feature cache.")
    p.add_argument("file", nargs="?", default=None, metavar="FILE.h5",
                   help="cache to describe (default: the newest under features/)")
    return p


def run(args, say):
    from features.cache.store import Cache, newest_cache  # h5py: only when the command runs

    with Cache(args.file or newest_cache()) as cache:
        info = cache.summary()
        info["skipped"] = [{"path": p, "reason": r} for p, r in cache.skipped]
    say(f"{info['path']} ({info['file_mb']:.2f} MB, created {info['created']})")
    say(f"  backbone {info['backbone']}" + (f" alpha {info['alpha']:g}" if info["alpha"] else "")
        + f", weights {info['weights']}, {info['image_size']} px, preprocess {info['preprocess']},"
        f" pool {info['pool']}, precision {info['precision']}")
    for layer, shape in info["features"].items():
        say(f"  features/{layer}: {info['n_images']} x {' x '.join(map(str, shape))}")
    say(f"  images {info['n_images']} (skipped {info['n_skipped']}); split {info['split']} "
        f"(seed {info['seed']}, test {info['test_size']}, val {info['val_size']})")
    say("  classes: " + ", ".join(f"{c} ({k})" for c, k in info["classes"].items()))
    say(f"  data: {info['data_dir']}; generation {info['generation']} (0: first extraction, "
        "+1 each time extract grew it)")
    for item in info["skipped"]:
        say(f"  skipped {item['path']}: {item['reason']}")
    return info

"""`audit`: near-duplicates (and leaks across the split), likely label errors, outliers and class
balance of a feature cache (features/audit/run.py), as a summary, JSON and an HTML report."""

from __future__ import annotations

from bottleneck.cli.common import add_cache_args, options_from_args
from features.audit.duplicates import THRESHOLD
from features.audit.exclude import EXCLUDE_KINDS as KINDS


def add_parser(sub):
    p = sub.add_parser(
        "audit", help="find near-duplicates, leaks across the split, label errors and outliers",
        description="Look at the data through its cached features: near-duplicate images "
                    "(within a split and across splits, where they inflate the test score), "
                    "likely label errors (confident learning, cleanlab, on out-of-fold "
                    "probabilities of our own CV), outliers far from every other image, and "
                    "class balance. Writes audit.json, audit.html (thumbnails) and exclude.txt "
                    "(for fit/extract --exclude) under --out. Needs the audit extra: pip "
                    "install 'bottleneck-transfer[audit]'.")
    add_cache_args(p, "cached layer (or NAME,NAME / all) to compare images by (default: the "
                      "only layer, or all)")
    p.add_argument("--out", default="audit", metavar="DIR",
                   help="folder for audit.json, audit.html and exclude.txt (default ./audit)")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help="near-duplicate score (CSLS of cosine similarity, README) at and above "
                        f"which two images are called copies (default {THRESHOLD}, measured on "
                        "planted copies: BENCHMARKS.md)")
    p.add_argument("--exclude-kinds", default="leaks", metavar="KIND[,KIND]",
                   help=f"what exclude.txt lists, among {', '.join(KINDS)} (default leaks: the "
                        "val/test images with a near-duplicate in another split; duplicates: "
                        "all but one image of every group)")
    p.add_argument("--cv", type=int, default=5, dest="folds", metavar="K",
                   help="folds of the out-of-fold probabilities for label errors (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the CV folds (default 0)")
    p.add_argument("--n-jobs", type=int, default=-1, help="cores for the CV folds (default all)")
    return p


def run(args, say):
    from features.audit.run import AuditOptions, run_audit, say_audit

    kinds = tuple(k.strip() for k in args.exclude_kinds.split(",") if k.strip())
    result = run_audit(options_from_args(AuditOptions, args, exclude_kinds=kinds), say)
    say_audit(result, say)
    return result

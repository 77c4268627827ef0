"""`predict`: classify images with a saved head (or, later, a fine-tuned network)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys

from features.atomic import atomic_path
from features.errors import UserError


def add_parser(sub):
    p = sub.add_parser("predict", help="classify images with a head (.joblib) or network (.keras)",
                       description="Run the backbone named by the head's provenance and the head "
                                   "on top; print the top-k classes of each image. Unreadable "
                                   "images are reported, not fatal. joblib files run code when "
                                   "loaded: only use heads you trust.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders")
    p.add_argument("--model", required=True, metavar="HEAD.joblib|MODEL.keras",
                   help="a head from fit/fit-* (or a fine-tuned network)")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="also write path,label,probability,top_k rows to FILE")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the local backbone weights file, when it moved since extraction")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--tta", type=int, default=0, metavar="N",
                   help="test-time augmentation: average the probabilities of the plain image and "
                        "N seeded augmented views (crop, flip, rotation, colour; default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --tta views (default 0)")
    return p


def check_flags(args):
    """Refuse flag values that cannot work before loading any model."""
    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.csv and not os.path.isdir(os.path.dirname(os.path.abspath(args.csv))):
        raise UserError(f"--csv {args.csv}: its folder does not exist; create it or pick another")
    if args.csv:
        from features.atomic import check_writable

        check_writable(args.csv, "--csv")
    if args.tta < 0:
        raise UserError("--tta must be 0 (off) or a number of augmented views")


class _Rows(contextlib.ExitStack):
    """Where each image's result goes: one JSON line (--json) or a human line, plus --csv rows
    (written atomically: the file appears, complete, when the run ends)."""

    def __init__(self, args, say):
        super().__init__()
        self.as_json, self.say, self.csv, self.writer = args.json, say, args.csv, None

    def __enter__(self):
        super().__enter__()
        if self.csv:
            handle = self.enter_context(open(self.enter_context(atomic_path(self.csv)), "w",
                                             newline=""))
            self.writer = csv.writer(handle)
            self.writer.writerow(["path", "label", "probability", "top_k", "error"])
        return self

    def failed(self, path, reason):
        if self.as_json:
            print(json.dumps({"path": path, "label": None, "top_k": [], "error": reason}),
                  flush=True)
        else:
            self.say(f"{path}: cannot read ({reason})")
        if self.writer:
            self.writer.writerow([path, "", "", "", reason])

    def predicted(self, path, top):
        if self.as_json:
            print(json.dumps({"path": path, "label": top[0][0], "probability": top[0][1],
                              "top_k": top}), flush=True)
        else:
            self.say(f"{path}: " + ", ".join(f"{c} {p:.3f}" for c, p in top))
        if self.writer:
            self.writer.writerow([path, top[0][0], top[0][1], json.dumps(top), ""])


def top_classes(proba, names, k):
    """The k most probable [class, probability] pairs, ties in class order."""
    import numpy as np

    order = np.argsort(-proba, kind="stable")[:k]
    return [[names[i], round(float(proba[i]), 6)] for i in order]


def run(args, say):
    check_flags(args)
    from bottleneck.predict.predictor import collect_images, load_predictor, predict_paths

    predictor = load_predictor(args.model, args.weights)
    paths = collect_images(args.inputs)
    if predictor.info.get("warning"):
        print(f"warning: {predictor.info['warning']}", file=sys.stderr)
    k = min(args.top_k, len(predictor.class_names))
    n_ok, failed, counts = 0, [], {}
    with _Rows(args, say) as rows:
        for path, proba, reason in predict_paths(predictor, paths, args.batch_size, tta=args.tta,
                                                   seed=args.seed):
            if proba is None:
                failed.append({"path": path, "error": reason})
                rows.failed(path, reason)
                continue
            top = top_classes(proba, predictor.class_names, k)
            counts[top[0][0]] = counts.get(top[0][0], 0) + 1
            n_ok += 1
            rows.predicted(path, top)
    say(f"predicted {n_ok} image(s) with {predictor.path}"
        + (f"; {len(failed)} unreadable" if failed else "")
        + (f"; csv -> {args.csv}" if args.csv else ""))
    if args.json:
        return None
    return {"n": n_ok, "failed": failed, "counts": counts, "model": predictor.path}

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
    p.add_argument("--out", default=None, metavar="FILE.csv|FILE.jsonl",
                   help="write one row per image to FILE (CSV or JSON lines, by its extension) "
                        "instead of printing them: the streaming path for large folders")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the local backbone weights file, when it moved since extraction")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--tta", type=int, default=0, metavar="N",
                   help="test-time augmentation: average the probabilities of the plain image and "
                        "N seeded augmented views (crop, flip, rotation, colour; default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --tta views (default 0)")
    return p


OUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def check_flags(args):
    """Refuse flag values that cannot work before loading any model."""
    from features.atomic import check_writable

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.csv and not os.path.isdir(os.path.dirname(os.path.abspath(args.csv))):
        raise UserError(f"--csv {args.csv}: its folder does not exist; create it or pick another")
    if args.csv:
        check_writable(args.csv, "--csv")
    if args.out and out_format(args.out) is None:
        raise UserError(f"--out {args.out}: name it .csv or .jsonl (its extension picks the "
                        "format)")
    if args.out:
        check_writable(args.out, "--out")
    if args.tta < 0:
        raise UserError("--tta must be 0 (off) or a number of augmented views")


def out_format(path: str) -> str | None:
    """'csv' or 'jsonl' by the file's extension, or None."""
    return OUT_FORMATS.get(os.path.splitext(path)[1].lower())


CSV_HEADER = ["path", "label", "probability", "top_k", "error"]


def json_row(path, top, reason=None) -> str:
    """One image's JSON line (as --json prints and --out FILE.jsonl writes)."""
    if reason is not None:
        return json.dumps({"path": path, "label": None, "top_k": [], "error": reason})
    return json.dumps({"path": path, "label": top[0][0], "probability": top[0][1], "top_k": top})


def csv_row(path, top, reason=None) -> list:
    """One image's CSV row (path,label,probability,top_k,error)."""
    if reason is not None:
        return [path, "", "", "", reason]
    return [path, top[0][0], top[0][1], json.dumps(top), ""]


class _Rows(contextlib.ExitStack):
    """Where each image's result goes, as it comes: printed (a JSON line under --json, else a
    human line) unless --out is given, and written to --csv/--out files (atomically: each
    appears, complete, under its name when the run ends; nothing is kept in memory)."""

    def __init__(self, args, say):
        super().__init__()
        self.as_json, self.say, self.printing = args.json, say, not args.out
        self.files = [(f, fmt) for f, fmt in ((args.csv, "csv"),
                                              (args.out, args.out and out_format(args.out))) if f]
        self.writers = []

    def __enter__(self):
        super().__enter__()
        for path, fmt in self.files:
            handle = self.enter_context(open(self.enter_context(atomic_path(path)), "w",
                                             newline="" if fmt == "csv" else None))
            self.writers.append(self._writer(handle, fmt))
        return self

    @staticmethod
    def _writer(handle, fmt):
        """A function (path, top, reason) writing one row to `handle` in `fmt`."""
        if fmt == "jsonl":
            return lambda *row: handle.write(json_row(*row) + "\n")
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        return lambda *row: writer.writerow(csv_row(*row))

    def failed(self, path, reason):
        if self.printing and self.as_json:
            print(json_row(path, None, reason), flush=True)
        elif self.printing:
            self.say(f"{path}: cannot read ({reason})")
        for write in self.writers:
            write(path, None, reason)

    def predicted(self, path, top):
        if self.printing and self.as_json:
            print(json_row(path, top), flush=True)
        elif self.printing:
            self.say(f"{path}: " + ", ".join(f"{c} {p:.3f}" for c, p in top))
        for write in self.writers:
            write(path, top)


FAILED_SHOWN = 10   # unreadable images named in the summary (all are in the rows)


def run(args, say):
    """Predict every image as it is read; keeps only running counts (bounded by the classes)."""
    check_flags(args)
    from bottleneck.predict.base import top_classes
    from bottleneck.predict.predictor import collect_images, load_predictor, predict_paths

    predictor = load_predictor(args.model, args.weights)
    paths = collect_images(args.inputs)
    if predictor.info.get("warning"):
        print(f"warning: {predictor.info['warning']}", file=sys.stderr)
    k = min(args.top_k, len(predictor.class_names))
    n_ok, n_failed, failed, counts = 0, 0, [], {}
    with _Rows(args, say) as rows:
        for path, proba, reason in predict_paths(predictor, paths, args.batch_size, tta=args.tta,
                                                   seed=args.seed):
            if proba is None:
                n_failed += 1
                if len(failed) < FAILED_SHOWN:
                    failed.append({"path": path, "error": reason})
                rows.failed(path, reason)
                continue
            top = top_classes(proba, predictor.class_names, k)
            counts[top[0][0]] = counts.get(top[0][0], 0) + 1
            n_ok += 1
            rows.predicted(path, top)
    say(f"predicted {n_ok} image(s) with {predictor.path}"
        + (f"; {n_failed} unreadable" if n_failed else "")
        + "".join(f"; {fmt} -> {f}" for f, fmt in rows.files))
    if args.json and not args.out:
        return None   # the rows were the JSON output
    return {"n": n_ok, "n_failed": n_failed, "failed": failed, "counts": counts,
            "model": predictor.path, "out": args.out}

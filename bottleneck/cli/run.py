"""`run`: the whole route in one command: advise, extract, fit, finetune where advised, report."""

from __future__ import annotations

import os
import time

from bottleneck.cli.common import add_backbone_args
from bottleneck.route.report import write_run_report
from features.errors import UserError


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
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default 5)")
    p.add_argument("--heads", default=None, help="head kinds for `fit` (default: fit's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of split, CV and training")
    return p


def _cli(argv: list[str], say):
    """Run one of our commands in-process; returns its summary dict."""
    from bottleneck.cli import build_parser

    args = build_parser().parse_args([str(a) for a in argv])
    args.json = False
    return args._run(args, say)


def run(args, say):
    out = args.out_dir
    os.makedirs(out, exist_ok=True)
    backbone = ["--backbone", args.backbone] + (
        ["--alpha", args.alpha] if args.alpha is not None else [])
    weights = ["--weights", args.weights]
    stages, result = [], {}

    def step(name):
        say(f"\n== {name}")
        return time.time()

    started = step("advise")
    sweep_json = None
    if args.sweep:
        sweep = _cli(["sweep", "--data", args.data, *backbone, *weights,
                      "--out-dir", os.path.join(out, "sweep"), "--seed", args.seed]
                     + (["--image-size", args.image_size] if args.image_size else []), say)
        sweep_json = sweep.get("json") or os.path.join(out, "sweep", "sweep.json")
        result["sweep"] = sweep
    advice = _cli(["advise", "--data", args.data, *backbone]
                  + (["--sweep", sweep_json] if sweep_json and os.path.isfile(sweep_json) else []),
                  say)
    result["advise"] = advice
    size = args.image_size or advice["image_size"]
    stages.append({"name": "advise" + (" (after a sweep)" if sweep_json else ""),
                   "seconds": round(time.time() - started, 1), "note": advice["route"],
                   "plots": [("linear probe per layer", result["sweep"].get("plot"))]
                   if sweep_json else []})

    started = step("extract")
    cache = os.path.join(out, "features.h5")
    extracted = _cli(["extract", "--data", args.data, *backbone, *weights, "--image-size", size,
                      "--layer", advice["layer"], "--out", cache, "--seed", args.seed], say)
    if extracted.get("already_complete"):
        say(f"{cache} is already complete: reusing it")
    result["extract"] = extracted
    stages.append({"name": "extract", "seconds": round(time.time() - started, 1),
                   "note": f"{extracted.get('n_images')} images, "
                           f"{extracted.get('n_skipped', 0)} skipped"})

    started = step("fit")
    fit_report = os.path.join(out, "fit_report")
    best = os.path.join(out, "best.joblib")
    fitted = _cli(["fit", "--features", cache, "--out", best, "--report", fit_report,
                   "--seed", args.seed]
                  + (["--class-weight", advice["class_weight"]] if advice["class_weight"] else [])
                  + (["--heads", args.heads] if args.heads else []), say)
    result["fit"] = fitted
    stages.append({"name": f"fit ({fitted['head']} head)",
                   "seconds": round(time.time() - started, 1), "report_dir": fit_report,
                   "note": f"cv {fitted['cv_score']:.4f} on train"})

    do_finetune = args.finetune == "yes" or (args.finetune == "auto" and advice["finetune"])
    if do_finetune:
        started = step("finetune")
        head = (fitted.get("transplantable") or {}).get("path") or best
        if fitted["head"] in ("svm-rbf", "svm-poly") and head == best:
            raise UserError("the best head is a kernel SVM and no transplantable head was fit; "
                            "pass --heads with a linear kind, or --finetune no")
        model = os.path.join(out, "finetuned.keras")
        ft_report = os.path.join(out, "finetune_report")
        # the recipe measured best on flowers5 (BENCHMARKS.md): Adam 5e-5 on a cosine, label
        # smoothing 0.1; augmentation stays off here (flips are wrong for some data)
        tuned = _cli(["finetune", "--from-head", head, "--epochs", args.epochs, "--out", model,
                      "--report", ft_report, "--seed", args.seed, "--optimizer", "adam",
                      "--lr", 5e-5, "--lr-schedule", "cosine", "--label-smoothing", 0.1]
                     + (["--unfreeze-from", advice["unfreeze_from"]]
                        if advice.get("unfreeze_from") else [])
                     + (["--class-weight", advice["class_weight"]]
                        if advice["class_weight"] else []), say)
        result["finetune"] = tuned
        stages.append({"name": "finetune", "seconds": round(time.time() - started, 1),
                       "report_dir": ft_report,
                       "plots": [("training curves",
                                  os.path.join(ft_report, "training_curves.png"))],
                       "note": f"from {os.path.basename(head)}; best epoch {tuned['best_epoch']}"})
    else:
        say("\n== finetune: skipped (" + ("--finetune no" if args.finetune == "no" else
                                          "advise: not worth it for this data") + ")")
    result["report"] = write_run_report(out, advice=advice, stages=stages)
    result["stages"] = stages
    say("\n" + "\n".join(f"{s['name']:<28} {s['seconds']:>7.1f} s  {s.get('note', '')}"
                         for s in stages))
    say(f"report: {result['report']['html']} and {result['report']['markdown']}")
    return result

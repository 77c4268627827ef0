"""`run` and `demo`: the whole route in one call, composed from the stage functions.

advise (after a sweep, if asked) -> extract -> fit -> finetune (when advised or forced) -> one
report. Each stage is called with its typed options; nothing is re-parsed from argv.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from features.errors import UserError

# the fine-tuning recipe measured best on flowers5 (BENCHMARKS.md): Adam 5e-5 on a cosine, label
# smoothing 0.1; augmentation stays off here (flips are wrong for some data)
FINETUNE_RECIPE = {"optimizer": "adam", "lr": 5e-5, "lr_schedule": "cosine",
                   "label_smoothing": 0.1}


@dataclass(frozen=True)
class RunOptions:
    data: str
    backbone: str = "vgg16"
    alpha: float | None = None
    weights: str = "imagenet"
    image_size: int | None = None
    out_dir: str = "run"
    sweep: bool = False
    finetune: str = "auto"          # auto (as advised) | yes | no
    finetune_route: str = "auto"    # auto (as advised) | cache (maps at the cut) | images
    epochs: int = 5
    heads: str | None = None        # fit's head kinds, comma-separated (default: fit's own)
    seed: int = 0

    def __post_init__(self):
        if self.finetune not in ("auto", "yes", "no"):
            raise UserError(f"--finetune {self.finetune!r}: choose auto, yes or no")
        if self.finetune_route not in ("auto", "cache", "images"):
            raise UserError(f"--finetune-route {self.finetune_route!r}: choose auto, cache or "
                            "images")


def run_route(opts: RunOptions, say=print) -> dict:
    """Every stage on opts.data; returns each stage's summary, the stage table and the report."""
    from bottleneck.route.report import write_run_report

    os.makedirs(opts.out_dir, exist_ok=True)
    result, stages = {}, []
    advice = _advise(opts, result, stages, say)
    cache = _extract(opts, advice, result, stages, say)
    fitted = _fit(opts, advice, cache, result, stages, say)
    if opts.finetune == "yes" or (opts.finetune == "auto" and advice["finetune"]):
        _finetune(opts, advice, fitted, result, stages, say)
    else:
        say("\n== finetune: skipped (" + ("--finetune no" if opts.finetune == "no" else
                                          "advise: not worth it for this data") + ")")
    result["report"] = write_run_report(opts.out_dir, advice=advice, stages=stages)
    result["stages"] = stages
    say("\n" + "\n".join(f"{s['name']:<28} {s['seconds']:>7.1f} s  {s.get('note', '')}"
                         for s in stages))
    say(f"report: {result['report']['html']} and {result['report']['markdown']}")
    return result


def _step(name: str, say) -> float:
    say(f"\n== {name}")
    return time.time()


def _advise(opts: RunOptions, result: dict, stages: list, say) -> dict:
    from bottleneck.explore.advise import AdviseOptions, advise
    from bottleneck.explore.sweep import SweepOptions, sweep

    started = _step("advise", say)
    sweep_json = None
    if opts.sweep:
        result["sweep"] = sweep(SweepOptions(
            data=opts.data, backbone=opts.backbone, alpha=opts.alpha, weights=opts.weights,
            image_size=opts.image_size, out_dir=os.path.join(opts.out_dir, "sweep"),
            seed=opts.seed), say)
        sweep_json = result["sweep"]["json"]
    advice = advise(AdviseOptions(data=opts.data, backbone=opts.backbone, alpha=opts.alpha,
                                  sweep=sweep_json), say)
    result["advise"] = advice
    stages.append({"name": "advise" + (" (after a sweep)" if sweep_json else ""),
                   "seconds": round(time.time() - started, 1), "note": advice["route"],
                   "plots": [("linear probe per layer", result["sweep"]["plot"])]
                   if sweep_json else []})
    return advice


def _extract(opts: RunOptions, advice: dict, result: dict, stages: list, say) -> str:
    from bottleneck.extract import ExtractOptions, run_extract, say_summary

    started = _step("extract", say)
    cache = os.path.join(opts.out_dir, "features.h5")
    extracted = run_extract(ExtractOptions(
        data=opts.data, backbone=opts.backbone, alpha=opts.alpha, weights=opts.weights,
        image_size=opts.image_size or advice["image_size"], layers=(str(advice["layer"]),),
        out=cache, seed=opts.seed), say=say)
    if extracted.get("already_complete"):
        say(f"{cache} is already complete: reusing it")
    else:
        say_summary(extracted, say)
    result["extract"] = extracted
    stages.append({"name": "extract", "seconds": round(time.time() - started, 1),
                   "note": f"{extracted.get('n_images')} images, "
                           f"{extracted.get('n_skipped', 0)} skipped"})
    return cache


def _fit(opts: RunOptions, advice: dict, cache: str, result: dict, stages: list, say) -> dict:
    from features.heads.kinds import DEFAULT_FIT_KINDS, KINDS
    from features.heads.run import FitOptions, fit_best

    started = _step("fit", say)
    kinds = [k.strip() for k in (opts.heads or ",".join(DEFAULT_FIT_KINDS)).split(",")
             if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        raise UserError(f"--heads {opts.heads!r}: choose among {', '.join(KINDS)}")
    report = os.path.join(opts.out_dir, "fit_report")
    fitted = fit_best(FitOptions(features=cache, out=os.path.join(opts.out_dir, "best.joblib"),
                                 report=report, seed=opts.seed,
                                 class_weight=advice["class_weight"]), kinds, say)
    result["fit"] = fitted
    stages.append({"name": f"fit ({fitted['head']} head)",
                   "seconds": round(time.time() - started, 1), "report_dir": report,
                   "note": f"cv {fitted['cv_score']:.4f} on train"})
    return fitted


def _finetune(opts: RunOptions, advice: dict, fitted: dict, result: dict, stages: list, say):
    from bottleneck.finetune.options import FinetuneOptions
    from bottleneck.finetune.run import run_finetune
    from features.heads.kinds import NOT_TRANSPLANTABLE

    started = _step("finetune", say)
    head = (fitted.get("transplantable") or {}).get("path") or fitted["path"]
    if fitted["head"] in NOT_TRANSPLANTABLE and head == fitted["path"]:
        raise UserError("the best head is a kernel SVM and no transplantable head was fit; "
                        "pass --heads with a linear kind, or --finetune no")
    report = os.path.join(opts.out_dir, "finetune_report")
    maps = _maps_for_cache_route(opts, advice, result, say)
    tuned = run_finetune(FinetuneOptions(
        from_head=head, epochs=opts.epochs, out=os.path.join(opts.out_dir, "finetuned.keras"),
        report=report, seed=opts.seed, unfreeze_from=None if maps else advice.get("unfreeze_from"),
        class_weight=advice["class_weight"], from_cache=maps, **FINETUNE_RECIPE), say=say)
    result["finetune"] = tuned
    stages.append({"name": "finetune" + (" (from the cache)" if maps else ""),
                   "seconds": round(time.time() - started, 1),
                   "report_dir": report,
                   "plots": [("training curves", os.path.join(report, "training_curves.png"))],
                   "note": f"from {os.path.basename(head)}; best epoch {tuned['best_epoch']}"})


def _maps_for_cache_route(opts: RunOptions, advice: dict, result: dict, say) -> str | None:
    """The cache route when advised (or forced): extract the maps at the cut (pool none,
    float16, no views: `run` trains without augmentation) and return their path; None for the
    image route. The choice and its reason are said in one line."""
    from bottleneck.extract import ExtractOptions, run_extract
    from bottleneck.finetune.route_choice import choose_route
    from features.cache.sizing import free_bytes

    choice = advice.get("finetune_route") or {}
    if choice.get("cut"):   # advise assumed run's default epochs and its size: use the real ones
        ratio = (opts.image_size or advice["image_size"]) / advice["image_size"]
        h, w, c = choice["map_shape"]
        shape = (max(1, round(h * ratio)), max(1, round(w * ratio)), c)
        choice = choose_route(epochs=opts.epochs, n_images=advice["stats"]["n_images"],
                              cut=choice["cut"], map_shape=shape,
                              free_disk=free_bytes(os.path.join(opts.out_dir, "maps.h5")),
                              storage="float32" if opts.weights == "none" else "float16"
                              ).to_json()
    take = opts.finetune_route == "cache" or (opts.finetune_route == "auto"
                                              and choice.get("route") == "cache")
    if opts.finetune_route == "cache" and not choice.get("cut"):
        raise UserError("--finetune-route cache: " + "; ".join(choice.get("reasons") or
                                                               ["no cut was found"]))
    reason = "; ".join(choice.get("reasons") or ["advise gave no route"])
    if not take:
        why = reason if opts.finetune_route == "auto" else "--finetune-route images"
        say(f"finetune on the images ({why})")
        return None
    say(f"finetune from the cache ({reason})")
    maps = os.path.join(opts.out_dir, "maps.h5")
    result["maps"] = run_extract(ExtractOptions(
        data=opts.data, backbone=opts.backbone, alpha=opts.alpha, weights=opts.weights,
        image_size=opts.image_size or advice["image_size"], layers=(choice["cut"],),
        pool="none", out=maps, seed=opts.seed, progress=False,
        # random-init activations have no set scale (they can shrink below float16's range)
        storage="float32" if opts.weights == "none" else "float16"), say=say)
    return maps


@dataclass(frozen=True)
class DemoOptions:
    dir: str = "demo"
    n_per_class: int = 40
    image_size: int = 96
    epochs: int = 2


def demo(opts: DemoOptions, say=print) -> dict:
    """`run` on a drawn image set: MobileNet 0.25, ImageNet weights when they can be had."""
    from bottleneck.backbones.registry import WeightsUnavailable, build_body, get_backbone
    from bottleneck.data.synthetic import PATTERNS, make_image_folder

    images = os.path.join(opts.dir, "images")
    if not os.path.isdir(images):
        make_image_folder(images, n_per_class=opts.n_per_class, size=opts.image_size)
    say(f"demo: {len(PATTERNS)} classes x {opts.n_per_class} drawn images in {images}/")
    weights = "imagenet"
    try:
        build_body(get_backbone("mobilenet"), weights="imagenet", image_size=opts.image_size,
                   alpha=0.25)
    except WeightsUnavailable:
        say("notice: ImageNet weights cannot be downloaded here (offline?); using random init")
        weights = "none"
    return run_route(RunOptions(data=images, backbone="mobilenet", alpha=0.25, weights=weights,
                                image_size=opts.image_size, out_dir=opts.dir, sweep=True,
                                finetune="yes", epochs=opts.epochs), say)

"""The rules `advise` applies, in one table: each with its threshold, what it recommends and why.

README.md ("advise") prints the same table with the sources; keep the two in step.
"""

from __future__ import annotations

import math
import os

import numpy as np

# name: (threshold, rule in words, source)
RULES = {
    "small_set": (1000, "fewer than 1000 images in all: bottleneck features + a linear head "
                        "(logistic regression / linear SVM); fine-tuning millions of weights "
                        "over-fits so few examples",
                  "Razavian et al. 2014, CNN Features off-the-shelf; Keras transfer-learning "
                  "guide; CS231n transfer-learning notes (small dataset)"),
    "finetune_min_per_class": (50, "fine-tune only when the smallest class also has at least "
                                   "50 images (the validation split must see it)",
                               "CS231n transfer-learning notes (large dataset)"),
    "saturated": (0.98, "a best probe score at or above 0.98: fine-tuning has little to gain",
                  "the probe itself: under 2 points left to win"),
    "deep_unfreeze": (10000, "10000 images or more (or data unlike ImageNet: the sweep's best "
                             "layer beats the top one by more than the folds' spread): "
                             "unfreeze the top two blocks instead of the top one",
                      "Yosinski et al. 2014, How transferable are features in deep neural "
                      "networks?; CS231n (large and different dataset)"),
    "imbalance": (1.5, "largest / smallest class at or above 1.5: --class-weight balanced "
                       "(weights n / (k * n_c))",
                  "He & Garcia 2009, Learning from Imbalanced Data; scikit-learn class_weight"),
    "layer": (None, "the sweep's best layer; without a sweep the backbone's default (last conv "
                    "block), which suits data like ImageNet; data unlike it usually prefers lower "
                    "layers: run `sweep` to decide",
              "Yosinski et al. 2014"),
    "image_size": (32, "the backbone's own input size, unless the images are smaller: then their "
                       "median short side rounded up to a multiple of 32 (upscaling adds no "
                       "detail, only compute)",
                   "Keras applications input sizes; CS231n"),
}


def threshold(name):
    return RULES[name][0]


def suggest_size(median_short: float | None, default_size: int, min_size: int = 32) -> int:
    if not median_short or median_short >= default_size:
        return default_size
    step = threshold("image_size")
    return int(max(min_size, step * math.ceil(median_short / step)))


def recommend(stats: dict, *, sweep: dict | None = None, default_layer: str | None = None,
              default_size: int = 224, min_size: int = 32, unfreeze: dict | None = None) -> dict:
    """The advice for dataset `stats` (n_images, per_class, imbalance_ratio, median_short_side),
    an optional sweep summary (best_layer, best_cv, best_is_last, lower_wins), the backbone's
    default layer and size, and `unfreeze` = {1: layer name, 2: layer name} (the top one / two
    blocks)."""
    reasons: list[str] = []
    # data unlike ImageNet: a lower layer beat the top one by more than the probe's noise
    unlike = bool(sweep) and sweep.get("lower_wins", not sweep.get("best_is_last", True))
    layer = _layer(sweep, default_layer, unlike, reasons)
    finetune = _worth_finetuning(stats, sweep.get("best_cv") if sweep else None, reasons)
    unfreeze_from, blocks = _unfreeze(stats, finetune, unlike, unfreeze, reasons)
    class_weight = _class_weight(float(stats["imbalance_ratio"]), reasons)
    size = _image_size(stats.get("median_short_side"), default_size, min_size, reasons)
    route = "features+linear" + ("+finetune" if finetune else "")
    return {"route": route, "layer": layer, "finetune": finetune, "unfreeze_from": unfreeze_from,
            "unfreeze_blocks": blocks, "class_weight": class_weight, "image_size": size,
            "reasons": reasons}


def _layer(sweep, default_layer, unlike: bool, reasons: list) -> str:
    if sweep:
        reasons.append(f"layer {sweep['best_layer']}: the best linear-probe score of the "
                       f"{sweep.get('label', 'sweep')} ({sweep.get('best_cv'):.3f})"
                       + ("; it is below the top layer, so this data is unlike ImageNet "
                          "(Yosinski et al. 2014)" if unlike else ""))
        return sweep["best_layer"]
    reasons.append(f"layer {default_layer}: the backbone's default (last conv block), which suits "
                   "data like ImageNet; for unusual data (X-ray, microscopy, textures) run "
                   "`python cli.py sweep` to let a probe decide (lower layers often win)")
    return default_layer


def _worth_finetuning(stats: dict, best_cv, reasons: list) -> bool:
    n = int(stats["n_images"])
    smallest = int(min(stats["per_class"].values()))
    if n < threshold("small_set"):
        reasons.append(f"{n} images < {threshold('small_set')}: use bottleneck features + a "
                       "linear head; fine-tuning would over-fit (Razavian et al. 2014; Keras "
                       "transfer-learning guide)")
        return False
    if smallest < threshold("finetune_min_per_class"):
        reasons.append(f"{n} images, but the smallest class has {smallest} < "
                       f"{threshold('finetune_min_per_class')}: stay with features + a linear "
                       "head; fine-tuning would over-fit that class")
        return False
    if best_cv is not None and best_cv >= threshold("saturated"):
        reasons.append(f"the best probe already scores {best_cv:.3f} >= "
                       f"{threshold('saturated')}: fine-tuning has little to gain")
        return False
    reasons.append(f"{n} images >= {threshold('small_set')} (smallest class {smallest}): "
                   "start with features + a linear head, then fine-tuning is worth its time "
                   "(CS231n: large dataset)")
    return True


def _unfreeze(stats: dict, finetune: bool, unlike: bool, unfreeze, reasons: list):
    """(the first layer to train, how many top blocks) when fine-tuning; (None, 0) otherwise."""
    if not finetune:
        return None, 0
    n = int(stats["n_images"])
    deep = n >= threshold("deep_unfreeze") or unlike
    blocks = 2 if deep else 1
    unfreeze_from = (unfreeze or {}).get(blocks)
    why = (f"{n} images >= {threshold('deep_unfreeze')}" if n >= threshold("deep_unfreeze")
           else "the data is unlike ImageNet" if unlike else "a moderate set")
    reasons.append(f"unfreeze from {unfreeze_from} (the top {'two blocks' if deep else 'block'}"
                   f"): {why}; keep a low learning rate (1e-5..1e-4)")
    return unfreeze_from, blocks


def _class_weight(ratio: float, reasons: list) -> str | None:
    if ratio >= threshold("imbalance"):
        reasons.append(f"classes are imbalanced (largest/smallest = {ratio:.2f} >= "
                       f"{threshold('imbalance')}): pass --class-weight balanced (He & Garcia "
                       "2009); report balanced accuracy / macro F1, not accuracy alone")
        return "balanced"
    reasons.append(f"classes are balanced enough (largest/smallest = {ratio:.2f} < "
                   f"{threshold('imbalance')}): no class weighting")
    return None


def _image_size(median_short, default_size: int, min_size: int, reasons: list) -> int:
    size = suggest_size(median_short, default_size, min_size)
    if median_short and size < default_size:
        reasons.append(f"image size {size}: the images are small (median short side "
                       f"{median_short:g} px); upscaling them to {default_size} adds no detail, "
                       "only compute")
    else:
        reasons.append(f"image size {size}: the backbone's own input size")
    return size


def dataset_stats(folder, sample: int = 200) -> dict:
    """Counts per class and image sizes of an ImageFolder (sizes from PIL headers of a sample)."""
    from PIL import Image, UnidentifiedImageError

    counts = np.bincount(folder.labels, minlength=len(folder.class_names))
    per_class = {c: int(k) for c, k in zip(folder.class_names, counts)}
    stats = counts_stats(per_class)
    picks = np.unique(np.linspace(0, len(folder.paths) - 1, min(sample, len(folder.paths)))
                      .round().astype(int))
    sizes, unreadable = [], 0
    for i in picks:
        try:
            with Image.open(folder.absolute(folder.paths[i])) as img:   # header only
                sizes.append(img.size)
        except (UnidentifiedImageError, OSError, ValueError):
            unreadable += 1
    if sizes:
        w, h = np.array(sizes).T
        short = np.minimum(w, h)
        stats.update(median_width=float(np.median(w)), median_height=float(np.median(h)),
                     median_short_side=float(np.median(short)), min_short_side=int(short.min()),
                     max_long_side=int(np.maximum(w, h).max()))
    stats.update(size_sample=int(len(picks)), size_unreadable=unreadable)
    return stats


def counts_stats(per_class: dict) -> dict:
    values = np.array(list(per_class.values()))
    nonzero = values[values > 0]
    return {"n_images": int(values.sum()), "n_classes": len(per_class), "per_class": per_class,
            "min_per_class": int(values.min()), "max_per_class": int(values.max()),
            "median_per_class": float(np.median(values)),
            "imbalance_ratio": round(float(nonzero.max() / nonzero.min()), 3) if len(nonzero)
            else 1.0}


def is_file(path) -> bool:
    return bool(path) and os.path.isfile(path)

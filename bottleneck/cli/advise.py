"""`advise`: read the dataset (and a sweep, if any) and recommend a route, with its reasons."""

from __future__ import annotations

import json
import os

from bottleneck.data.images import scan_folder
from bottleneck.explore.advice import RULES, counts_stats, dataset_stats, recommend
from features.errors import UserError


def add_parser(sub):
    p = sub.add_parser(
        "advise", help="recommend a route (layer, fine-tuning, class weights, size) for a dataset",
        description="Count the images per class, measure the imbalance and the image sizes (PIL "
                    "headers of a sample), read a sweep's probe scores when given, and recommend: "
                    "bottleneck features + a linear head for small sets (< 1000 images), which "
                    "layer (the sweep's best; else the backbone's default), whether fine-tuning "
                    "is worth its time and from which block to unfreeze, --class-weight balanced "
                    "for imbalance >= 1.5, and an image size that does not upscale small images. "
                    "The rules and their sources are in README.md (advise).")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="class-per-folder tree (default: the sweep's or the cache's data folder)")
    p.add_argument("--sweep", default=None, metavar="DIR/sweep.json",
                   help="a sweep result (sweep.json, or the folder holding it)")
    p.add_argument("--features", default=None, metavar="FILE.h5",
                   help="a feature cache: its backbone, and a quick probe of its layers when no "
                        "sweep is given")
    p.add_argument("--backbone", default=None,
                   help="backbone to advise for (default: the sweep's or cache's, else vgg16)")
    p.add_argument("--alpha", type=float, default=None, help="width multiplier (mobilenet*)")
    return p


def _load_sweep(path):
    if os.path.isdir(path):
        path = os.path.join(path, "sweep.json")
    if not os.path.isfile(path):
        raise UserError(f"--sweep {path}: no such file; run `python cli.py sweep --data DIR` "
                        "first, or drop --sweep")
    try:
        with open(path) as handle:
            data = json.load(handle)
        data["best_layer"]
    except (ValueError, KeyError) as exc:
        raise UserError(f"--sweep {path} is not a sweep.json written by `sweep`") from exc
    data.setdefault("best_cv", max(r["cv_mean"] for r in data["layers"]))
    return data


def _probe_cache(cache, say):
    """A sweep-like summary from probing each layer of a cache (train split)."""
    from features.probe import cv_probe, probe_rows

    rows = probe_rows(cache.labels, cache.split_mask("train"), 2000, 0)
    scores, stds = [], {}
    for layer in cache.layers:
        result = cv_probe(cache.features(layer, rows), cache.labels[rows])
        scores.append((result["cv_mean"], layer))
        stds[layer] = result["cv_std"]
        say(f"  probe {layer}: {result['cv_mean']:.3f} ± {result['cv_std']:.3f}")
    best_cv, best = max(scores)
    top = max(zip(cache.attrs["layer_indices"], cache.layers))[1]
    means = {layer: mean for mean, layer in scores}
    wins = best != top and best_cv - means[top] > max(stds[best], stds[top])
    index = dict(zip(cache.layers, cache.attrs["layer_indices"]))
    return {"best_layer": best, "best_index": int(index[best]), "best_cv": best_cv,
            "best_is_last": best == top, "lower_wins": bool(wins),
            "label": f"layers of {os.path.basename(cache.path)}", "source": cache.path}


def run(args, say):
    from bottleneck.backbones.registry import build_body, get_backbone
    from bottleneck.backbones.stages import layer_spec, unfreeze_point

    sweep = _load_sweep(args.sweep) if args.sweep else None
    cache_info, probe = None, None
    if args.features:
        from features.store import Cache

        with Cache(args.features) as cache:
            cache_info = cache.provenance().to_json()
            cache_counts = {c: int((cache.labels == i).sum())
                            for i, c in enumerate(cache.class_names)}
            if sweep is None:
                say(f"no sweep given: probing the layers of {args.features}")
                probe = _probe_cache(cache, say)
    data = args.data or (sweep or {}).get("data") or (cache_info or {}).get("data_dir")
    if data and os.path.isdir(data):
        stats = dataset_stats(scan_folder(data))
        stats["data"] = os.path.abspath(data)
    elif cache_info:
        stats = counts_stats(cache_counts)
        stats["data"] = None
    else:
        raise UserError("pass --data DIR (a class-per-folder tree), or --sweep/--features whose "
                        "data folder still exists")

    source = sweep or cache_info or {}
    name = args.backbone or source.get("backbone") or "vgg16"
    if sweep and args.backbone and get_backbone(args.backbone).name != sweep.get("backbone"):
        raise UserError(f"--sweep was made with {sweep.get('backbone')}, not {args.backbone}: "
                        "drop --backbone, or sweep that backbone first")
    row = get_backbone(name)
    alpha = args.alpha if args.alpha is not None else source.get("alpha")
    alpha = None if not row.alphas else float(alpha if alpha is not None else 1.0)
    body = build_body(row, weights=None, image_size=row.default_size, alpha=alpha)
    # The chosen tap, as an index: the sweep's/probe's best, else the backbone's default. The
    # unfreeze point must lie below it (finetune's body ends at the tap), and an auto-named layer
    # is passed on by index (its name changes with what the process built before).
    best = sweep or probe
    if best and best.get("best_index") is not None:
        tap = int(best["best_index"]) % len(body.layers)
    elif best:
        names = [layer.name for layer in body.layers]
        if best["best_layer"] not in names:
            raise UserError(f"layer {best['best_layer']!r} of the sweep is not in {row.name}; "
                            "re-run the sweep")
        tap = names.index(best["best_layer"])
    else:
        from bottleneck.backbones.network import default_layer_specs, resolve_layers

        tap = resolve_layers(body, default_layer_specs(row))[0][1]
    from features.tf import keras
    cut = keras.Model(body.inputs, body.layers[tap].output)
    unfreeze = {}
    for blocks in (1, 2):
        point = unfreeze_point(cut, blocks)
        unfreeze[blocks] = layer_spec(cut, point[1]) if point else None
    default_layer = layer_spec(body, tap)
    if best:
        best = {**best, "best_layer": default_layer}
        sweep, probe = (best, None) if sweep else (None, best)
    del body, cut

    advice = recommend(stats, sweep=sweep or probe, default_layer=default_layer,
                       default_size=row.default_size, min_size=row.min_size, unfreeze=unfreeze)
    swept = (sweep or {}).get("image_size")
    if swept and int(swept) != advice["image_size"]:
        advice["reasons"].append(f"the sweep ran at {swept} px, not {advice['image_size']}: the "
                                 "best layer can shift with the size; re-run the sweep at "
                                 f"--image-size {advice['image_size']} to confirm it")
    import shlex

    next_cmd = ["python", "cli.py", "extract", "--data", stats["data"] or "DIR", "--backbone",
                row.name] + (["--alpha", f"{alpha:g}"] if alpha is not None else []) + [
        "--image-size", str(advice["image_size"]), "--layer", str(advice["layer"])]
    weights = source.get("weights")
    if weights and weights != "imagenet" and not str(weights).startswith("sha256:"):
        next_cmd[7:7] = ["--weights", str(weights)]   # what the sweep/cache used (e.g. none)
    advice["command"] = " ".join(shlex.quote(p) for p in next_cmd)
    advice.update(backbone=row.name, alpha=alpha, stats=stats,
                  sweep=args.sweep, features=args.features,
                  rules={k: {"threshold": v[0], "rule": v[1], "source": v[2]}
                         for k, v in RULES.items()})

    say(f"dataset: {stats['n_images']} images, {stats['n_classes']} classes "
        f"({stats['min_per_class']}..{stats['max_per_class']} per class, imbalance "
        f"{stats['imbalance_ratio']:.2f})"
        + (f", median {stats['median_width']:g}x{stats['median_height']:g} px"
           if "median_width" in stats else ""))
    say(f"route: {advice['route']}  (backbone {row.name}, layer {advice['layer']}, "
        f"image size {advice['image_size']}, fine-tune {'yes' if advice['finetune'] else 'no'}"
        + (f" from {advice['unfreeze_from']}" if advice["finetune"] else "")
        + f", class weight {advice['class_weight'] or 'none'})")
    for reason in advice["reasons"]:
        say(f"  - {reason}")
    say(f"next:\n  {advice['command']}")
    return advice

"""`advise`: read the dataset (and a sweep or a cache, if any) and recommend a route with reasons.

The rules and their sources are in bottleneck/explore/advice.py; this module gathers their inputs
(dataset counts and image sizes, the best layer, the unfreeze points of the backbone cut at that
layer) and writes the next command.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass

from features.errors import UserError


@dataclass(frozen=True)
class AdviseOptions:
    data: str | None = None       # default: the sweep's or the cache's data folder
    sweep: str | None = None      # sweep.json, or the folder holding it
    features: str | None = None   # a cache: its backbone, and a probe of its layers
    backbone: str | None = None   # default: the sweep's or cache's, else vgg16
    alpha: float | None = None


def advise(opts: AdviseOptions, say=print) -> dict:
    """The advice (route, layer, size, fine-tuning, class weighting, reasons, next command)."""
    from bottleneck.backbones.registry import get_backbone
    from bottleneck.explore.advice import RULES, recommend

    sweep = load_sweep(opts.sweep) if opts.sweep else None
    cache_info, counts, probe = _read_cache(opts.features, sweep, say)
    stats = _dataset_stats(opts, sweep, cache_info, counts)
    source = sweep or cache_info or {}
    row = get_backbone(opts.backbone or source.get("backbone") or "vgg16")
    if sweep and opts.backbone and row.name != sweep.get("backbone"):
        raise UserError(f"--sweep was made with {sweep.get('backbone')}, not {opts.backbone}: "
                        "drop --backbone, or sweep that backbone first")
    alpha = row.resolve_alpha(opts.alpha if opts.alpha is not None else source.get("alpha"))
    best, default_layer, unfreeze, cuts = _layers(row, alpha, sweep or probe)
    advice = recommend(stats, sweep=best, default_layer=default_layer,
                       default_size=row.default_size, min_size=row.min_size, unfreeze=unfreeze)
    # the stage-3 route, also when fine-tuning is not advised (`run --finetune yes` uses it)
    advice["finetune_route"] = _finetune_route(advice, stats, cuts, row.default_size)
    if advice["finetune"]:
        advice["reasons"].extend(advice["finetune_route"]["reasons"])
    swept = (sweep or {}).get("image_size")
    if swept and int(swept) != advice["image_size"]:
        advice["reasons"].append(f"the sweep ran at {swept} px, not {advice['image_size']}: the "
                                 "best layer can shift with the size; re-run the sweep at "
                                 f"--image-size {advice['image_size']} to confirm it")
    advice["command"] = _next_command(stats, row, alpha, advice, source.get("weights"))
    advice.update(backbone=row.name, alpha=alpha, stats=stats, sweep=opts.sweep,
                  features=opts.features,
                  rules={k: {"threshold": v[0], "rule": v[1], "source": v[2]}
                         for k, v in RULES.items()})
    _say_advice(advice, stats, row, say)
    return advice


def load_sweep(path: str) -> dict:
    """A sweep.json written by `sweep` (or the folder holding it)."""
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


def _read_cache(path: str | None, sweep: dict | None, say):
    """(the cache's provenance as JSON, its class counts, a probe of its layers when there is no
    sweep) for --features; (None, None, None) without it."""
    if not path:
        return None, None, None
    from features.cache.store import Cache

    with Cache(path) as cache:
        info = cache.provenance().to_json()
        counts = {c: int((cache.labels == i).sum()) for i, c in enumerate(cache.class_names)}
        probe = None
        if sweep is None:
            say(f"no sweep given: probing the layers of {path}")
            probe = _probe_cache(cache, say)
    return info, counts, probe


def _probe_cache(cache, say) -> dict:
    """A sweep-like summary from probing each layer of a cache (train split)."""
    from features.heads.probe import cv_probe, probe_rows

    rows = probe_rows(cache.labels, cache.split_mask("train"), 2000, 0)
    indices = cache.provenance().layer_indices
    scores, stds = [], {}
    for layer in cache.layers:
        result = cv_probe(cache.features(layer, rows), cache.labels[rows])
        scores.append((result["cv_mean"], layer))
        stds[layer] = result["cv_std"]
        say(f"  probe {layer}: {result['cv_mean']:.3f} ± {result['cv_std']:.3f}")
    best_cv, best = max(scores)
    top = max(zip(indices, cache.layers))[1]
    means = {layer: mean for mean, layer in scores}
    wins = best != top and best_cv - means[top] > max(stds[best], stds[top])
    index = dict(zip(cache.layers, indices))
    return {"best_layer": best, "best_index": int(index[best]), "best_cv": best_cv,
            "best_is_last": best == top, "lower_wins": bool(wins),
            "label": f"layers of {os.path.basename(cache.path)}", "source": cache.path}


def _dataset_stats(opts: AdviseOptions, sweep, cache_info, counts) -> dict:
    """Counts and image sizes of the data folder, or the cache's counts when it is gone."""
    from bottleneck.data.images import scan_folder
    from bottleneck.explore.advice import counts_stats, dataset_stats

    data = opts.data or (sweep or {}).get("data") or (cache_info or {}).get("data_dir")
    if data and os.path.isdir(data):
        return {**dataset_stats(scan_folder(data)), "data": os.path.abspath(data)}
    if cache_info:
        return {**counts_stats(counts), "data": None}
    raise UserError("pass --data DIR (a class-per-folder tree), or --sweep/--features whose "
                    "data folder still exists")


def _layers(row, alpha, best: dict | None):
    """(the sweep/probe summary with its layer named for a command line, the chosen tap's
    name, {1: unfreeze layer, 2: ...}). The unfreeze point lies below the chosen tap (finetune's
    body ends there), and an auto-named layer is passed on by index (its name depends on what
    the process built before)."""
    from bottleneck.backbones.registry import build_body
    from bottleneck.backbones.stages import layer_spec, unfreeze_point
    from bottleneck.finetune.route_choice import cut_below
    from features.tf import keras

    body = build_body(row, weights=None, image_size=row.default_size, alpha=alpha)
    tap = _tap_index(body, row, best)
    cut = keras.Model(body.inputs, body.layers[tap].output)
    unfreeze, cuts = {}, {}
    for blocks in (1, 2):
        point = unfreeze_point(cut, blocks)
        unfreeze[blocks] = layer_spec(cut, point[1]) if point else None
        cuts[blocks] = (cut_below(cut, point[1], len(cut.layers) - 1) if point
                        else (None, None, "no unfreeze point"))
    default_layer = layer_spec(body, tap)
    return (({**best, "best_layer": default_layer} if best else None), default_layer, unfreeze,
            cuts)


def _finetune_route(advice: dict, stats: dict, cuts: dict, default_size: int,
                    epochs: int = 5) -> dict:
    """The stage-3 route (bottleneck/finetune/route_choice.py) for `run`'s default epochs: the
    map at the cut scaled from the backbone's default size to the advised one."""
    from bottleneck.finetune.route_choice import choose_route
    from features.cache.sizing import free_bytes

    name, shape, why = cuts.get(advice["unfreeze_blocks"] or 1) or (None, None, "no cut")
    if shape is not None:
        ratio = advice["image_size"] / default_size
        shape = (max(1, round(shape[0] * ratio)), max(1, round(shape[1] * ratio)), shape[2])
    return choose_route(epochs=epochs, n_images=int(stats["n_images"]), cut=name,
                        map_shape=shape, free_disk=free_bytes("features/x.h5"),
                        why_no_cut=why).to_json()


def _tap_index(body, row, best: dict | None) -> int:
    """The chosen tap: the sweep's/probe's best, else the backbone's default."""
    if best and best.get("best_index") is not None:
        return int(best["best_index"]) % len(body.layers)
    if best:
        names = [layer.name for layer in body.layers]
        if best["best_layer"] not in names:
            raise UserError(f"layer {best['best_layer']!r} of the sweep is not in {row.name}; "
                            "re-run the sweep")
        return names.index(best["best_layer"])
    from bottleneck.backbones.network import default_layer_specs, resolve_layers

    return resolve_layers(body, default_layer_specs(row))[0][1]


def _next_command(stats, row, alpha, advice, weights) -> str:
    parts = ["python", "cli.py", "extract", "--data", stats["data"] or "DIR", "--backbone",
             row.name] + (["--alpha", f"{alpha:g}"] if alpha is not None else []) + [
        "--image-size", str(advice["image_size"]), "--layer", str(advice["layer"])]
    if weights and weights != "imagenet" and not str(weights).startswith("sha256:"):
        parts[7:7] = ["--weights", str(weights)]   # what the sweep/cache used (e.g. none)
    return " ".join(shlex.quote(p) for p in parts)


def _say_advice(advice: dict, stats: dict, row, say) -> None:
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

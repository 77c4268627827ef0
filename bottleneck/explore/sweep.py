"""`sweep`: tap the end of every stage in one forward pass and rank them with a linear probe.

ImageNet features are most specific to ImageNet at the top: data unlike ImageNet (X-ray,
microscopy, satellite, textures, colour-coded classes) usually prefers a lower layer, which is what
the sweep measures. Only the cache's TRAIN split is probed; val and test stay unseen.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex
from dataclasses import dataclass

from features.atomic import atomic_path, write_json
from features.errors import UserError


@dataclass(frozen=True)
class SweepOptions:
    data: str
    backbone: str = "vgg16"
    alpha: float | None = None
    weights: str = "imagenet"
    image_size: int | None = None
    layers: tuple[str, ...] = ()       # default: the end of every stage
    out_dir: str = "sweep"
    folds: int = 5
    max_probe: int = 5000
    batch_size: int = 32
    test_size: float = 0.2
    val_size: float = 0.1
    seed: int = 0
    split_from: str | None = None      # another cache whose split to reuse
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.folds < 2:
            raise UserError(f"--folds must be at least 2 (got {self.folds})")
        if self.max_probe < 2:
            raise UserError(f"--max-probe must be at least 2 (got {self.max_probe})")


def sweep(opts: SweepOptions, say=print) -> dict:
    """Extract every tap into one cache, probe each layer on the train split, write sweep.json,
    sweep.csv and sweep.png to opts.out_dir; returns the summary (sweep.json's content)."""
    from bottleneck.backbones.registry import check_weights_arg, get_backbone

    row = get_backbone(opts.backbone)
    check_weights_arg(opts.weights)
    image_size = opts.image_size or row.default_size
    alpha = row.resolve_alpha(opts.alpha)
    taps, specs = _taps(opts, row, alpha, image_size)
    os.makedirs(opts.out_dir, exist_ok=True)
    cache_path = os.path.join(opts.out_dir, cache_name(opts, row, alpha, image_size,
                                                      [str(i) for _, i in taps]))
    say(f"sweep: {len(taps)} taps of {row.name} in one pass: {', '.join(n for n, _ in taps)}")
    extracted = _extract(opts, row.name, alpha, image_size, taps, cache_path, say)
    rows, n_train, n_classes = _probe(cache_path, specs, opts)
    best = max(rows, key=lambda r: (r["cv_mean"], -r["cv_std"], -r["index"]))
    summary = _summary(opts, row, alpha, image_size, rows, best, cache_path, n_train, n_classes)
    summary["n_images"] = extracted.get("n_images")
    _say_table(rows, best, n_train, n_classes, say)
    _write_outputs(summary, rows, best, f"{row.name} @ {image_size}px, weights {opts.weights}")
    say(f"\nbest layer: {best['layer']} (depth {best['index']}, CV {best['cv_mean']:.3f})"
        + _verdict(best, rows[-1], summary["lower_wins"]))
    say(f"use it:\n  {summary['command']}")
    say(f"wrote {summary['json']}, {summary['csv']}, {summary['plot']}")
    return summary


def _taps(opts: SweepOptions, row, alpha, image_size):
    """([(name, index)] to tap, {index: how to name it on a command line}). Shapes only: a
    random-init body (no download) gives the stage ends and stable specs."""
    from bottleneck.backbones.network import resolve_layers
    from bottleneck.backbones.registry import build_body
    from bottleneck.backbones.stages import layer_spec, stage_ends

    body = build_body(row, weights=None, image_size=image_size, alpha=alpha)
    taps = resolve_layers(body, opts.layers) if opts.layers else stage_ends(body)
    return taps, {index: layer_spec(body, index) for _, index in taps}


def cache_name(opts: SweepOptions, row, alpha, image_size, specs) -> str:
    """The sweep's cache file name: the data folder's name for reading, and a hash of everything
    that makes the cache differ (the data folder's full path included, so two folders with the
    same name get two caches)."""
    key = json.dumps([os.path.abspath(opts.data), opts.weights, list(specs), opts.seed,
                      opts.test_size, opts.val_size]
                     + ([os.path.abspath(opts.split_from)] if opts.split_from else []))
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    name = os.path.basename(os.path.abspath(opts.data).rstrip("/")) or "data"
    width = f"-a{alpha:g}" if alpha is not None else ""
    return f"{name}_{row.name}{width}_{image_size}_{digest}.h5"


def _extract(opts: SweepOptions, backbone, alpha, image_size, taps, cache_path, say) -> dict:
    from bottleneck.extract import ExtractOptions, run_extract, say_summary

    extracted = run_extract(ExtractOptions(
        data=opts.data, backbone=backbone, alpha=alpha, weights=opts.weights,
        layers=tuple(str(i) for _, i in taps), pool="avg", image_size=image_size,
        batch_size=opts.batch_size, test_size=opts.test_size, val_size=opts.val_size,
        seed=opts.seed, split_from=opts.split_from, out=cache_path, overwrite=opts.overwrite,
        progress=opts.progress), say=say)
    if not extracted.get("already_complete"):
        say_summary(extracted, say)
    return extracted


def _probe(cache_path: str, specs: dict, opts: SweepOptions):
    """([one row per layer, in depth order], training images probed, classes)."""
    from features.cache.store import Cache
    from features.heads.probe import cv_probe, probe_rows

    rows = []
    with Cache(cache_path) as cache:
        train = probe_rows(cache.labels, cache.split_mask("train"), opts.max_probe, opts.seed)
        labels = cache.labels[train]
        for layer, index in zip(cache.layers, cache.provenance().layer_indices):
            result = cv_probe(cache.features(layer, train), labels, folds=opts.folds,
                              seed=opts.seed)   # one layer in memory at a time
            rows.append({"layer": layer, "index": int(index), "dim": cache.feature_dim(layer),
                         "cv_mean": round(result["cv_mean"], 4),
                         "cv_std": round(result["cv_std"], 4), "C": result["C"],
                         "folds": result["folds"], "spec": specs.get(int(index), str(index))})
        n_classes = len(cache.class_names)
    return sorted(rows, key=lambda r: r["index"]), len(train), n_classes


def _summary(opts, row, alpha, image_size, rows, best, cache_path, n_train, n_classes) -> dict:
    from features.heads.probe import C_GRID

    last = rows[-1]
    # a lower layer "wins" only by more than the spread of the folds' scores
    lower_wins = best is not last and (best["cv_mean"] - last["cv_mean"]
                                       > max(best["cv_std"], last["cv_std"]))
    paths = {k: os.path.join(opts.out_dir, f"sweep.{k}") for k in ("json", "csv", "png")}
    return {
        "layers": [{k: r[k] for k in ("layer", "index", "dim", "cv_mean", "cv_std", "C")}
                   for r in rows],
        "best_layer": best["layer"], "best_index": best["index"], "best_cv": best["cv_mean"],
        "best_is_last": best is last, "lower_wins": bool(lower_wins),
        "command": extract_command(opts, row.name, alpha, image_size, best["spec"]),
        "plot": paths["png"], "json": paths["json"], "csv": paths["csv"], "cache": cache_path,
        "data": os.path.abspath(opts.data), "backbone": row.name, "alpha": alpha,
        "weights": opts.weights, "image_size": image_size, "n_train": int(n_train),
        "n_classes": n_classes, "chance": round(1 / n_classes, 4), "folds": rows[0]["folds"],
        "c_grid": list(C_GRID), "seed": opts.seed,
    }


def extract_command(opts: SweepOptions, backbone: str, alpha, image_size, spec: str) -> str:
    """The `extract` command that caches the chosen layer with the sweep's settings."""
    parts = ["python", "cli.py", "extract", "--data", opts.data, "--backbone", backbone]
    if alpha is not None:
        parts += ["--alpha", f"{alpha:g}"]
    parts += ["--weights", opts.weights, "--image-size", str(image_size)]
    if opts.seed:
        parts += ["--seed", str(opts.seed)]
    if opts.test_size != 0.2:
        parts += ["--test-size", f"{opts.test_size:g}"]
    if opts.val_size != 0.1:
        parts += ["--val-size", f"{opts.val_size:g}"]
    if opts.split_from:
        parts += ["--split-from", opts.split_from]
    parts += ["--layer", spec]
    return " ".join(shlex.quote(str(p)) for p in parts)


def _say_table(rows, best, n_train, n_classes, say) -> None:
    width = max(len(r["layer"]) for r in rows)
    say(f"\nlinear probe on {n_train} training images, {n_classes} classes (chance "
        f"{1 / n_classes:.3f}), {rows[0]['folds']}-fold CV:")
    say(f"  {'layer':<{width}}  depth   dim  CV accuracy")
    for r in rows:
        mark = "  <- best" if r is best else ""
        say(f"  {r['layer']:<{width}}  {r['index']:>5}  {r['dim']:>4}  "
            f"{r['cv_mean']:.3f} ± {r['cv_std']:.3f}{mark}")


def _verdict(best, last, lower_wins: bool) -> str:
    if best is last:
        return ""
    if lower_wins:
        return (f"; it beats the top layer {last['layer']} ({last['cv_mean']:.3f}) by more "
                "than the folds' spread: your data is unlike what the top layers learned")
    return (f"; the top layer {last['layer']} ({last['cv_mean']:.3f}) is within the folds' "
            "spread of it: either will do")


def _write_outputs(summary: dict, rows, best, title: str) -> None:
    _plot(rows, best, summary["n_classes"], title, summary["plot"])
    with atomic_path(summary["csv"]) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["layer", "index", "dim", "cv_mean", "cv_std",
                                                    "C", "folds"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_json(summary["json"], summary, indent=2)


def _plot(rows, best, n_classes, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.errorbar([r["index"] for r in rows], [r["cv_mean"] for r in rows],
                yerr=[r["cv_std"] for r in rows], marker="o", capsize=3)
    ax.plot([best["index"]], [best["cv_mean"]], marker="*", markersize=16, color="tab:red",
            linestyle="none", label=f"best: {best['layer']}")
    ax.axhline(1 / n_classes, color="grey", linestyle="--", linewidth=1, label="chance")
    for r in rows:
        ax.annotate(r["layer"], (r["index"], r["cv_mean"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=7, rotation=20)
    ax.set_xlabel("depth (layer index in the body)")
    ax.set_ylabel("linear probe CV accuracy (train split)")
    ax.set_ylim(0, 1.08)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

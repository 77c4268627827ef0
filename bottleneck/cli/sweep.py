"""`sweep`: tap the end of every stage in one forward pass and rank them with a linear probe."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex

from bottleneck.backbones.registry import build_body, check_weights_arg, get_backbone
from bottleneck.backbones.stages import layer_spec, stage_ends
from bottleneck.cli.common import add_backbone_args
from bottleneck.extract import ExtractOptions, run_extract
from features.errors import UserError
from features.probe import C_GRID, cv_probe, probe_rows

HELP = """Tap the end of every stage of a backbone (for each spatial size of its feature maps, the
last layer at that size) in ONE forward pass over the images, cache them all in one HDF5 file,
then score each layer with a quick cross-validated linear probe (StandardScaler +
LogisticRegression, C in {grid}, StratifiedKFold) on the TRAIN split only. Prints a table, writes
sweep.json, sweep.csv and sweep.png (CV accuracy against depth) to --out-dir, names the best layer
and the exact `extract` command that uses it. ImageNet features are most specific to ImageNet at
the top: data unlike ImageNet (X-ray, microscopy, satellite, textures, colour-coded classes)
usually prefers a lower layer, which is what the sweep tells you."""


def add_parser(sub):
    p = sub.add_parser("sweep", help="rank a backbone's stages by a linear probe: which layer to use",
                       description=HELP.format(grid=", ".join(f"{c:g}" for c in C_GRID)))
    p.add_argument("--data", required=True, metavar="DIR",
                   help="class-per-folder tree, as for extract")
    add_backbone_args(p)
    p.add_argument("--layer", action="append", dest="layers", default=[], metavar="NAME",
                   help="layer to probe, by name or index; repeat for several (default: the end "
                        "of every stage)")
    p.add_argument("--out-dir", default="sweep", metavar="DIR",
                   help="where the cache, sweep.json, sweep.csv and sweep.png go (default sweep/)")
    p.add_argument("--folds", type=int, default=5,
                   help="cross-validation folds of the probe (fewer if a class has fewer training "
                        "images; default 5)")
    p.add_argument("--max-probe", type=int, default=5000, metavar="N",
                   help="probe at most N training images (stratified sample; default 5000)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--test-size", type=float, default=0.2,
                   help="held-out test fraction of the cache's split (default 0.2; never probed)")
    p.add_argument("--val-size", type=float, default=0.1,
                   help="validation fraction of the cache's split (default 0.1; never probed)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split and of the probe's folds (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="re-extract even if the sweep's cache exists")
    return p


def _cache_name(data, row, alpha, image_size, specs, args) -> str:
    key = json.dumps([args.weights, list(specs), args.seed, args.test_size, args.val_size])
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    name = os.path.basename(os.path.abspath(data).rstrip("/")) or "data"
    width = f"-a{alpha:g}" if alpha is not None else ""
    return f"{name}_{row.name}{width}_{image_size}_{digest}.h5"


def extract_command(args, row, alpha, image_size, spec: str) -> str:
    parts = ["python", "cli.py", "extract", "--data", args.data, "--backbone", row.name]
    if alpha is not None:
        parts += ["--alpha", f"{alpha:g}"]
    parts += ["--weights", args.weights, "--image-size", str(image_size)]
    if args.seed:
        parts += ["--seed", str(args.seed)]
    if args.test_size != 0.2:
        parts += ["--test-size", f"{args.test_size:g}"]
    if args.val_size != 0.1:
        parts += ["--val-size", f"{args.val_size:g}"]
    parts += ["--layer", spec]
    return " ".join(shlex.quote(str(p)) for p in parts)


def run(args, say):
    if args.folds < 2:
        raise UserError("--folds must be at least 2")
    row = get_backbone(args.backbone)
    check_weights_arg(args.weights)
    image_size = args.image_size or row.default_size
    alpha = None if not row.alphas else float(args.alpha if args.alpha is not None else 1.0)
    # shapes only: a random-init body (no download) gives the stage ends and stable specs
    body = build_body(row, weights=None, image_size=image_size, alpha=alpha)
    if args.layers:
        from bottleneck.backbones.network import resolve_layers

        taps = resolve_layers(body, args.layers)
    else:
        taps = stage_ends(body)
    specs = {index: layer_spec(body, index) for _, index in taps}
    del body

    os.makedirs(args.out_dir, exist_ok=True)
    cache_path = os.path.join(args.out_dir, _cache_name(args.data, row, alpha, image_size,
                                                        [str(i) for _, i in taps], args))
    say(f"sweep: {len(taps)} taps of {row.name} in one pass: {', '.join(n for n, _ in taps)}")
    extracted = run_extract(ExtractOptions(
        data=args.data, backbone=row.name, alpha=alpha, weights=args.weights,
        layers=tuple(str(i) for _, i in taps), pool="avg", image_size=image_size,
        batch_size=args.batch_size, test_size=args.test_size, val_size=args.val_size,
        seed=args.seed, out=cache_path, overwrite=args.overwrite,
        progress=not args.json), say=say)
    if not extracted.get("already_complete"):
        from bottleneck.cli.extract import say_summary

        say_summary(extracted, say)

    from features.store import Cache

    rows = []
    with Cache(cache_path) as cache:
        train = probe_rows(cache.labels, cache.split_mask("train"), args.max_probe, args.seed)
        labels = cache.labels[train]
        n_classes = len(cache.class_names)
        for layer, index in zip(cache.layers, cache.attrs["layer_indices"]):
            features = cache.features(layer, train)   # one layer at a time
            result = cv_probe(features, labels, folds=args.folds, seed=args.seed)
            del features
            rows.append({"layer": layer, "index": int(index), "dim": cache.feature_dim(layer),
                         "cv_mean": round(result["cv_mean"], 4),
                         "cv_std": round(result["cv_std"], 4), "C": result["C"],
                         "folds": result["folds"], "spec": specs.get(int(index), str(index))})
    rows.sort(key=lambda r: r["index"])
    best = max(rows, key=lambda r: (r["cv_mean"], -r["cv_std"], -r["index"]))
    command = extract_command(args, row, alpha, image_size, best["spec"])

    width = max(len(r["layer"]) for r in rows)
    say(f"\nlinear probe on {len(train)} training images, {n_classes} classes (chance "
        f"{1 / n_classes:.3f}), {rows[0]['folds']}-fold CV:")
    say(f"  {'layer':<{width}}  depth   dim  CV accuracy")
    for r in rows:
        mark = "  <- best" if r is best else ""
        say(f"  {r['layer']:<{width}}  {r['index']:>5}  {r['dim']:>4}  "
            f"{r['cv_mean']:.3f} ± {r['cv_std']:.3f}{mark}")

    paths = {k: os.path.join(args.out_dir, f"sweep.{k}") for k in ("json", "csv", "png")}
    _plot(rows, best, n_classes, f"{row.name} @ {image_size}px, weights {args.weights}",
          paths["png"])
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["layer", "index", "dim", "cv_mean", "cv_std",
                                                    "C", "folds"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    last = rows[-1]
    # a lower layer "wins" only by more than the spread of the folds' scores
    lower_wins = best is not last and (best["cv_mean"] - last["cv_mean"]
                                       > max(best["cv_std"], last["cv_std"]))
    summary = {
        "layers": [{k: r[k] for k in ("layer", "index", "dim", "cv_mean", "cv_std", "C")}
                   for r in rows],
        "best_layer": best["layer"], "best_index": best["index"], "best_cv": best["cv_mean"],
        "best_is_last": best is last, "lower_wins": bool(lower_wins), "command": command, "plot": paths["png"],
        "json": paths["json"], "csv": paths["csv"], "cache": cache_path,
        "data": os.path.abspath(args.data), "backbone": row.name, "alpha": alpha,
        "weights": args.weights, "image_size": image_size, "n_train": int(len(train)),
        "n_classes": n_classes, "chance": round(1 / n_classes, 4), "folds": rows[0]["folds"],
        "c_grid": list(C_GRID), "seed": args.seed, "n_images": extracted.get("n_images"),
    }
    with open(paths["json"], "w") as handle:
        json.dump(summary, handle, indent=2)
    if best is last:
        verdict = ""
    elif lower_wins:
        verdict = (f"; it beats the top layer {last['layer']} ({last['cv_mean']:.3f}) by more "
                   "than the folds' spread: your data is unlike what the top layers learned")
    else:
        verdict = (f"; the top layer {last['layer']} ({last['cv_mean']:.3f}) is within the "
                   "folds' spread of it: either will do")
    say(f"\nbest layer: {best['layer']} (depth {best['index']}, CV {best['cv_mean']:.3f})"
        + verdict)
    say(f"use it:\n  {command}")
    say(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")
    return summary


def _plot(rows, best, n_classes, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["index"] for r in rows]
    y = [r["cv_mean"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.errorbar(x, y, yerr=[r["cv_std"] for r in rows], marker="o", capsize=3)
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
    fig.savefig(path)
    plt.close(fig)

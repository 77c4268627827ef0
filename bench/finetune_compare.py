"""Stage 3, full images against the cache route: test accuracy against seconds of training.

    python bench/finetune.py --compare --tag mn025 [--backbone mobilenet --alpha 0.25
        --weights W --image-size 224 --head-tap conv_pw_13_relu] --cuts conv_pw_11_relu,...
        [--views 4] [--cache-epochs 25,10] [--seeds 0,1,2] [--lrs 5e-5,find]
        [--image-seeds 0 --image-epochs 5 --image-budget 600 --image-unfreeze block_13_expand]
        [--reference-json '{"ensemble": 0.926, ...}']

All through the CLI, one split (the folder's split record: seed 0, test 0.2, val 0.1):
  1. `extract` the head's cache (avg pool of --head-tap) and `fit-logistic --refit-on train`;
  2. `extract --pool none --views K --storage float16` at each cut (seconds recorded: the
     one-off cost of the cache route);
  3. `finetune --from-cache --find-lr` at the first cut (train split only: its suggestion may be
     one of --lrs as `find`);
  4. seed 0 of every (cut, lr), `finetune --from-head --from-cache` (Adam, cosine, label
     smoothing 0.1, --epochs per cut); the configuration with the best val accuracy (never
     test) runs the other --seeds;
  5. optionally the full-image route, `finetune --from-head --augment` with the same head and
     recipe, for --image-seeds;
  6. summary_compare_<tag>.json and compare_<tag>.png (val accuracy per epoch against
     training seconds; test accuracy against training seconds, with and without extraction;
     reference lines from --reference-json and the transplanted head).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

try:
    from bench.finetune import DATA, WEIGHTS, cli
except ImportError:   # run as bench/finetune.py --compare: bench/ is on the path, not the root
    from finetune import DATA, WEIGHTS, cli

RECIPE = ["--optimizer", "adam", "--lr-schedule", "cosine", "--label-smoothing", 0.1,
          "--batch-size", 32]


def parse(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--tag", default="mn025")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--alpha", default="0.25")
    ap.add_argument("--weights", default=WEIGHTS)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--head-tap", default="conv_pw_13_relu")
    ap.add_argument("--cuts", default="conv_pw_11_relu")
    ap.add_argument("--cache-epochs", default="25", help="epochs per cut, comma-separated")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lrs", default="5e-5", help="learning rates tried on seed 0; 'find': the "
                    "finder's suggestion")
    ap.add_argument("--image-seeds", default="")
    ap.add_argument("--image-epochs", type=int, default=25)
    ap.add_argument("--image-budget", type=float, default=600)
    ap.add_argument("--image-unfreeze", default=None)
    ap.add_argument("--reference-json", default="{}")
    ap.add_argument("--work", default="/tmp/finetune-cache/work")
    return ap.parse_args(argv)


def _net(args):
    out = ["--backbone", args.backbone, "--weights", args.weights, "--image-size",
           args.image_size]
    return out + (["--alpha", args.alpha] if args.alpha else [])


def _final(run: dict) -> dict:
    """The figures of one finetune run the comparison needs."""
    best = run["best_epoch"]
    val = run["initial"].get("val_accuracy") if not best else run["epochs"][best - 1][
        "val_accuracy"]
    return {"test_accuracy": run["test_accuracy"], "train_s": run["train_seconds"],
            "best_epoch": best, "best_val": val, "epochs": len(run["epochs"]),
            "curve": [[e["seconds"], e["val_accuracy"]] for e in run["epochs"]],
            "wall_s": run["_wall"], "image_check": run.get("image_check"),
            "unfreeze_from": run.get("unfreeze_from"),
            "transplant_max_abs_prob_diff": run.get("transplant_max_abs_prob_diff")}


def main(argv=None) -> int:
    args = parse(argv)
    os.makedirs(args.work, exist_ok=True)
    w = lambda name: os.path.join(args.work, f"{args.tag}_{name}")  # noqa: E731
    summary = {"tag": args.tag, "backbone": args.backbone, "alpha": args.alpha,
               "image_size": args.image_size, "views": args.views,
               "load_before": open("/proc/loadavg").read().split()[:3],
               "reference": json.loads(args.reference_json)}
    head_cache = w("head.h5")
    ext = cli("extract", "--data", args.data, *_net(args), "--layer", args.head_tap,
              "--out", head_cache)
    head_file = w("logistic.joblib")
    head = cli("fit-logistic", "--features", head_cache, "--refit-on", "train", "--out",
               head_file, "--report", w("logistic_report"))
    summary["head"] = {"test_accuracy": head.get("test_accuracy"), "fit_wall_s": head["_wall"],
                       "extract_s": ext.get("seconds"), "split": ext.get("split")}
    cuts = [c for c in args.cuts.split(",") if c]
    epochs = dict(zip(cuts, [int(e) for e in args.cache_epochs.split(",")] * len(cuts)))
    maps = {}
    for cut in cuts:
        out = w(f"maps_{cut}.h5")
        got = cli("extract", "--data", args.data, *_net(args), "--layer", cut, "--pool", "none",
                  "--views", args.views, "--storage", "float16", "--out", out)
        maps[cut] = {"path": out, "extract_s": got.get("seconds"), "file_mb": got.get("file_mb")}
    summary["maps"] = maps
    found = cli("finetune", "--from-head", head_file, "--from-cache", maps[cuts[0]]["path"],
                "--find-lr", *RECIPE, "--out", w("lrfind.keras"))["lr_find"]
    summary["lr_find"] = {"suggestion": found["suggestion"], "plot": found["plot"]}
    lrs = [found["suggestion"]["min_over_10"] if x == "find" else float(x)
           for x in args.lrs.split(",")]
    runs = {}

    def cache_run(cut, lr, seed):
        key = f"{cut}|{lr:.2e}|{seed}"
        run = cli("finetune", "--from-head", head_file, "--from-cache", maps[cut]["path"],
                  *RECIPE, "--lr", lr, "--epochs", epochs[cut], "--seed", seed,
                  "--out", w(f"cache_{cut}_{lr:.0e}_s{seed}.keras"))
        runs[key] = {"cut": cut, "lr": lr, "seed": seed, **_final(run),
                     "extract_s": maps[cut]["extract_s"]}
        print(json.dumps({key: {k: runs[key][k] for k in ("test_accuracy", "train_s",
                                                          "best_val")}}), flush=True)
        return runs[key]

    seeds = [int(s) for s in args.seeds.split(",") if s]
    first = [cache_run(cut, lr, seeds[0]) for cut in cuts for lr in lrs]
    chosen = max(first, key=lambda r: (r["best_val"], -r["train_s"]))
    summary["chosen_on_val"] = {"cut": chosen["cut"], "lr": chosen["lr"]}
    for seed in seeds[1:]:
        cache_run(chosen["cut"], chosen["lr"], seed)
    summary["cache_runs"] = runs
    picked = [r for r in runs.values() if (r["cut"], r["lr"]) == (chosen["cut"], chosen["lr"])]
    summary["cache_route"] = _spread(picked)
    image = {}
    unfreeze = args.image_unfreeze or chosen["unfreeze_from"]   # the same layers train
    summary["image_unfreeze_from"] = unfreeze
    for seed in [int(s) for s in args.image_seeds.split(",") if s]:
        run = cli("finetune", "--from-head", head_file, *RECIPE, "--lr", chosen["lr"],
                  "--epochs", args.image_epochs, "--time-budget", args.image_budget, "--augment",
                  "--seed", seed, "--unfreeze-from", unfreeze,
                  "--out", w(f"images_s{seed}.keras"))
        image[seed] = _final(run)
    summary["image_runs"] = image
    summary["image_route"] = _spread(list(image.values())) if image else None
    summary["load_after"] = open("/proc/loadavg").read().split()[:3]
    with open(w("summary_compare.json"), "w") as handle:
        json.dump(summary, handle, indent=1, default=str)
    plot(summary, w("compare.png"))
    print(json.dumps({k: summary[k] for k in ("chosen_on_val", "cache_route", "image_route",
                                              "head", "maps", "lr_find")}, indent=1,
                     default=str))
    return 0


def _spread(runs: list[dict]) -> dict:
    tests = [r["test_accuracy"] for r in runs]
    train = [r["train_s"] for r in runs]
    return {"n": len(runs), "test_mean": round(statistics.mean(tests), 4),
            "test_std": round(statistics.stdev(tests), 4) if len(tests) > 1 else 0.0,
            "train_s_mean": round(statistics.mean(train), 1),
            "extract_s": runs[0].get("extract_s"), "tests": tests}


def replot(summary_path: str) -> str:
    """Redraw compare.png from a summary_compare.json (python -c 'from bench.finetune_compare
    import replot; replot(PATH)')."""
    with open(summary_path) as handle:
        summary = json.load(handle)
    out = summary_path.replace("summary_compare.json", "compare.png")
    plot(summary, out)
    return out


def plot(summary: dict, path: str) -> None:
    """Left: val accuracy per epoch against cumulative training seconds, every run. Right: test
    accuracy against training seconds (filled: training only; open: with the maps' extraction),
    reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    cuts = sorted({r["cut"] for r in summary["cache_runs"].values()})
    series = [("cache " + r["cut"] + f" lr {r['lr']:.0e} s{r['seed']}", r,
               f"C{cuts.index(r['cut'])}") for r in summary["cache_runs"].values()]
    series += [(f"images s{s}", r, "C3") for s, r in (summary.get("image_runs") or {}).items()]
    for label, run, colour in series:
        t, xs, ys = 0.0, [], []
        for seconds, val in run["curve"]:
            t += seconds
            xs.append(t)
            ys.append(val)
        left.plot(xs, ys, "-", color=colour, alpha=0.6, lw=1, label=label)
        right.plot(run["train_s"], run["test_accuracy"], "o", color=colour)
        if run.get("extract_s"):
            right.plot(run["train_s"] + run["extract_s"], run["test_accuracy"], "o",
                       mfc="none", color=colour)
    refs = dict(summary.get("reference") or {})
    refs.setdefault("transplanted head (stage 2)", summary["head"]["test_accuracy"])
    for i, (name, value) in enumerate(refs.items()):
        if isinstance(value, (int, float)):
            right.axhline(value, ls="--", color=f"C{(i + 4) % 10}", lw=1, label=name)
        elif isinstance(value, dict):   # a measured point: {"test": .., "train_s": ..}
            right.plot(value["train_s"], value["test"], "s", color="C3", label=name)
    left.set_xlabel("seconds of training")
    left.set_ylabel("val accuracy")
    left.legend(fontsize=6)
    right.set_xlabel("seconds of training (open: + the maps' extraction)")
    right.set_ylabel("test accuracy")
    right.legend(fontsize=7)
    fig.suptitle(f"finetune on flowers5, {summary['backbone']} {summary['alpha'] or ''} "
                 f"{summary['image_size']} px: full images against the cache")
    fig.tight_layout()
    fig.savefig(path, dpi=110)

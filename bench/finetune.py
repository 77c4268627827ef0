"""Stage 3 bench: transplanted head vs the classic route on ../shared/data/flowers5.

    python bench/finetune.py [--image-size 128] [--budget 120] [--epochs 3]
                             [--unfreeze-from conv_dw_6] [--augment] [--optimizer adam]
                             [--lr 3e-5] [--lr-schedule cosine] [--label-smoothing 0.1]
                             [--head logistic|svm] [--taps L1,L2,...] [--pool avg|avgmax]

Steps, all through the CLI (what a user runs):
  1. `extract` MobileNet 0.25 (real ImageNet weights from ../shared/weights), --pool over --taps
     (default: avg of the top layer), split 80/20 test + 10 % val, seed 0 (the heads issue's split);
  2. `fit-logistic` or `fit-svm` (linear) on all cached layers, refit on train: the stage-2 head
     (test accuracy = the figure to beat);
  3. `finetune --from-head`: (a) the transplanted network before training (must equal the head),
     (b) test accuracy after fine-tuning within --budget seconds of training;
  4. `finetune --head-init random`: the classic route (random Dense head on the same taps,
     --warmup-epochs 1 with the body frozen at 10x lr, then unfrozen), same settings and budget.
Time-to-accuracy: seconds until the val accuracy first reaches the transplanted head's val
accuracy. The transplant route has it before training and is charged the head fit (and, in a
second figure, the extraction as well); the classic route must train to it (inf: not within the
budget). The ratio is classic / transplant.

Absent ../shared assets: prints a note and exits 0.

`--compare` runs the other bench of this stage, full images against the cache route
(`finetune --from-cache`): see bench/finetune_compare.py for its flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
DATA = os.path.join(SHARED, "data", "flowers5")
WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")


def cli(*args) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "cli.py"), *map(str, args), "--json"]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"command failed ({proc.returncode})")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["_wall"] = round(time.time() - t0, 1)
    return out


def time_to(history, target, key="val_accuracy"):
    """Training seconds until `key` first reaches `target` (0 when epoch 0 already does)."""
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if row[key] is not None and row[key] >= target - 1e-9:
            return elapsed
    return float("inf")


def main():
    if "--compare" in sys.argv:   # full images against the cache route (bench/finetune_compare.py)
        try:
            from bench.finetune_compare import main as compare
        except ImportError:
            from finetune_compare import main as compare
        return compare(sys.argv[1:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--budget", type=float, default=120, help="training seconds per route")
    ap.add_argument("--epochs", type=int, default=20, help="epoch cap per route")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--optimizer", default="sgd", help="sgd (momentum 0.9) or adam, both routes")
    ap.add_argument("--lr-schedule", default="constant", help="constant or cosine, both routes")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="both routes")
    ap.add_argument("--unfreeze-from", default="conv_dw_12",
                    help="first trainable body layer of both routes (default the top block)")
    ap.add_argument("--augment", action="store_true", help="train both routes with --augment")
    ap.add_argument("--head", choices=("logistic", "svm"), default="logistic",
                    help="stage-2 head to transplant: fit-logistic or the linear fit-svm")
    ap.add_argument("--taps", default="conv_pw_13_relu",
                    help="comma-separated layers to cache and feed the head (default the top)")
    ap.add_argument("--pool", default="avg", help="pooling of the cache (avg, avgmax, ...)")
    ap.add_argument("--work", default=os.path.join(ROOT, "bench", "_work"))
    args = ap.parse_args()
    if not (os.path.isdir(DATA) and os.path.isfile(WEIGHTS)):
        print(f"skipped: {DATA} or {WEIGHTS} is absent")
        return 0
    os.makedirs(args.work, exist_ok=True)
    w = lambda name: os.path.join(args.work, name)  # noqa: E731
    taps = [t for t in args.taps.split(",") if t]
    tag = "" if (taps, args.pool) == (["conv_pw_13_relu"], "avg") else f"_{args.pool}{len(taps)}"
    cache = w(f"flowers5_mobilenet025_{args.image_size}{tag}.h5")
    ext = cli("extract", "--data", DATA, "--backbone", "mobilenet", "--alpha", "0.25",
              "--weights", WEIGHTS, "--image-size", args.image_size, "--pool", args.pool,
              *[a for t in taps for a in ("--layer", t)],
              "--test-size", 0.2, "--val-size", 0.1, "--seed", 0, "--out", cache)
    # refit on train only: the transplant is then the very head scored here, and val stays
    # unseen for the fine-tune's checkpoint choice
    head_file = w(f"{args.head}{tag}.joblib")
    head = cli(f"fit-{args.head}", "--features", cache, "--layer", "all", "--refit-on", "train",
               "--out", head_file, "--report", w(f"{args.head}{tag}_report"))
    head_acc = head.get("test_accuracy", head.get("test", {}).get("accuracy"))
    common = ["--epochs", args.epochs, "--time-budget", args.budget, "--lr", args.lr,
              "--optimizer", args.optimizer, "--lr-schedule", args.lr_schedule,
              "--label-smoothing", args.label_smoothing,
              "--batch-size", 32, "--seed", 0, "--unfreeze-from", args.unfreeze_from] + (
                  ["--augment"] if args.augment else [])
    a = cli("finetune", "--from-head", head_file, *common, "--out", w(f"ft_head{tag}.keras"))
    b = cli("finetune", "--head-init", "random", "--features", cache, "--warmup-epochs", 1,
            *common, "--out", w(f"ft_random{tag}.keras"))
    # target: the transplanted network's val accuracy (= the head's). Route A has it after
    # stage 2 (0 training seconds); route B has to train to it. A is charged the head fit, and
    # (second figure) the extraction too, which route B does not need.
    target = a["initial"]["val_accuracy"]
    stage2, stage12 = head["_wall"], float(ext.get("seconds") or 0) + head["_wall"]
    ta = min(0.0 if target <= a["initial"]["val_accuracy"] else float("inf"),
             time_to(a["epochs"], target))
    tb = time_to(b["epochs"], target)
    summary = {
        "image_size": args.image_size, "budget_s": args.budget, "lr": args.lr,
        "head": args.head, "taps": taps, "pool": args.pool,
        "optimizer": args.optimizer, "lr_schedule": args.lr_schedule,
        "label_smoothing": args.label_smoothing,
        "unfreeze_from": args.unfreeze_from, "augment": args.augment,
        "extract_s": ext.get("seconds"), "head_fit_wall_s": head["_wall"],
        "split": a["split"],
        "head_test_accuracy": head_acc,
        "transplant_agreement": a["transplant_agreement"],
        "transplant_max_abs_prob_diff": a["transplant_max_abs_prob_diff"],
        "transplanted_test_accuracy_before_training": a["initial"].get("test_accuracy"),
        "finetuned_test_accuracy": a["test_accuracy"], "finetune_epochs": len(a["epochs"]),
        "finetune_train_s": a["train_seconds"],
        "classic_test_accuracy": b["test_accuracy"], "classic_epochs": len(b["epochs"]),
        "classic_train_s": b["train_seconds"],
        "target_val_accuracy": target,
        "time_to_target_s": {"transplant_training": ta, "transplant_incl_head_fit": ta + stage2,
                             "transplant_incl_extract_and_head_fit": ta + stage12,
                             "classic": tb},
        "time_to_accuracy_ratio_classic_over_transplant": {
            "vs_head_fit": round(tb / (ta + stage2), 2),
            "vs_extract_and_head_fit": round(tb / (ta + stage12), 2)},
        "val_curves": {"transplant": [e["val_accuracy"] for e in a["epochs"]],
                       "classic": [e["val_accuracy"] for e in b["epochs"]]},
    }
    print(json.dumps(summary, indent=1, default=str))
    with open(w(f"summary{tag}.json"), "w") as handle:
        json.dump(summary, handle, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

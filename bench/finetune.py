"""Stage 3 bench: transplanted head vs the classic route on ../shared/data/flowers5.

    python bench/finetune.py [--image-size 128] [--budget 120] [--epochs 3]
                             [--unfreeze-from conv_dw_6] [--augment]

Steps, all through the CLI (what a user runs):
  1. `extract` MobileNet 0.25 (real ImageNet weights from ../shared/weights), avg pool, split
     80/20 test + 10 % val, seed 0 (the heads issue's split);
  2. `fit-logistic` on the cache: the stage-2 head (test accuracy = the figure to beat);
  3. `finetune --from-head`: (a) the transplanted network before training (must equal the head),
     (b) test accuracy after fine-tuning within --budget seconds of training;
  4. `finetune --head-init random`: the classic route (random Dense head, --warmup-epochs 1 with
     the body frozen at 10x lr, then unfrozen) in the same training budget.
Time-to-accuracy: seconds until the val accuracy first reaches the transplanted head's val
accuracy. The transplant route has it before training and is charged the head fit (and, in a
second figure, the extraction as well); the classic route must train to it (inf: not within the
budget). The ratio is classic / transplant.

Absent ../shared assets: prints a note and exits 0.
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
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--budget", type=float, default=120, help="training seconds per route")
    ap.add_argument("--epochs", type=int, default=20, help="epoch cap per route")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--unfreeze-from", default="conv_dw_12",
                    help="first trainable body layer of both routes (default the top block)")
    ap.add_argument("--augment", action="store_true", help="train both routes with --augment")
    ap.add_argument("--work", default=os.path.join(ROOT, "bench", "_work"))
    args = ap.parse_args()
    if not (os.path.isdir(DATA) and os.path.isfile(WEIGHTS)):
        print(f"skipped: {DATA} or {WEIGHTS} is absent")
        return 0
    os.makedirs(args.work, exist_ok=True)
    w = lambda name: os.path.join(args.work, name)  # noqa: E731
    cache = w(f"flowers5_mobilenet025_{args.image_size}.h5")
    ext = cli("extract", "--data", DATA, "--backbone", "mobilenet", "--alpha", "0.25",
              "--weights", WEIGHTS, "--image-size", args.image_size, "--pool", "avg",
              "--test-size", 0.2, "--val-size", 0.1, "--seed", 0, "--out", cache)
    head = cli("fit-logistic", "--features", cache, "--out", w("logistic.joblib"),
               "--report", w("logistic_report"))
    head_acc = head.get("test_accuracy", head.get("test", {}).get("accuracy"))
    common = ["--epochs", args.epochs, "--time-budget", args.budget, "--lr", args.lr,
              "--batch-size", 32, "--seed", 0, "--unfreeze-from", args.unfreeze_from] + (
                  ["--augment"] if args.augment else [])
    a = cli("finetune", "--from-head", w("logistic.joblib"), *common, "--out", w("ft_head.keras"))
    b = cli("finetune", "--head-init", "random", "--features", cache, "--warmup-epochs", 1,
            *common, "--out", w("ft_random.keras"))
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
    with open(w("summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What growing a cache costs: `extract` on a folder that gained a fraction of new images, against
a full extraction of the grown folder, both as whole `python cli.py extract --json` commands.

    python bench/grow.py --fraction 0.1 --repeat 2     # flowers5, MobileNet 0.25 (../shared)

Copies the folder to a temporary place without every 1/fraction-th image of each class, extracts
it (generation 0), brings the held-out images back, and times (a) the update of that cache and
(b) a fresh extraction of the grown folder into another file, `--repeat` times. The same command
once more on the grown cache (nothing to do) measures what every command pays before any image
(Python and TensorFlow start-up, the folder scan, the network build): `ratio_beyond_startup` is
(update - that) / (full - that).
Ratios, not absolute times, are the figures to read on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FLOWERS = os.path.join(SHARED, "data", "flowers5")
MOBILENET = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")


def extract(data: str, out: str, weights: str) -> tuple[float, dict]:
    """(whole-command seconds, --json summary) of one extract command."""
    cmd = [sys.executable, os.path.join(ROOT, "cli.py"), "extract", "--data", data, "--out", out,
           "--backbone", "mobilenet", "--alpha", "0.25", "--weights", weights, "--json"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stdout.strip().splitlines()[-1])


def split_folder(src: str, dest: str, held: str, every: int) -> int:
    """Copy `src` to `dest`, every `every`-th image of each class to `held` instead."""
    from bottleneck.data.images import class_folders

    moved = 0
    for cls in class_folders(src):
        for i, name in enumerate(sorted(os.listdir(os.path.join(src, cls)))):
            target = held if i % every == every - 1 else dest
            os.makedirs(os.path.join(target, cls), exist_ok=True)
            shutil.copy(os.path.join(src, cls, name), os.path.join(target, cls, name))
            moved += target == held
    return moved


def compare(grown: str, fresh: str) -> dict:
    """The grown cache against the fresh one: largest feature difference, and each class's
    test share in the grown cache."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from features.cache.store import Cache

    with Cache(grown) as g, Cache(fresh) as f:
        assert g.paths == f.paths
        diff = float(np.abs(g.features(g.layers) - f.features(f.layers)).max())
        shares = {name: round(float((g.split[g.labels == k] == 2).mean()), 3)
                  for k, name in enumerate(g.class_names)}
    return {"max_feature_diff": diff, "test_share_per_class": shares}


def one_round(work: str, args) -> dict:
    """Grow once: base extraction, then the update and a fresh full extraction."""
    data, held = os.path.join(work, "flowers"), os.path.join(work, "held")
    new = split_folder(args.data, data, held, round(1 / args.fraction))
    base_s, base = extract(data, os.path.join(work, "grown.h5"), args.weights)
    for cls in os.listdir(held):
        for name in os.listdir(os.path.join(held, cls)):
            shutil.move(os.path.join(held, cls, name), os.path.join(data, cls, name))
    update_s, update = extract(data, os.path.join(work, "grown.h5"), args.weights)
    noop_s, noop = extract(data, os.path.join(work, "grown.h5"), args.weights)
    full_s, full = extract(data, os.path.join(work, "fresh.h5"), args.weights)
    same = compare(os.path.join(work, "grown.h5"), os.path.join(work, "fresh.h5"))
    assert noop["already_complete"] and update["n_computed"] == new and full["n_images"] == update["n_images"]
    return {"new": new, "base_images": base["n_images"], "base_s": round(base_s, 2),
            "update_s": round(update_s, 2), "update_run_s": update["seconds"],
            "full_s": round(full_s, 2), "full_run_s": full["seconds"],
            "noop_s": round(noop_s, 2), "ratio_command": round(update_s / full_s, 3),
            "ratio_beyond_startup": round((update_s - noop_s) / (full_s - noop_s), 3),
            "ratio_run": round(update["seconds"] / full["seconds"], 3),
            "n_images": update["n_images"], **same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=FLOWERS)
    p.add_argument("--weights", default=MOBILENET)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-grow-") as work:
            print(json.dumps(one_round(work, args)), flush=True)


if __name__ == "__main__":
    main()

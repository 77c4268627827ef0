"""How well the folder's split stays stratified as the folder grows (issue 21).

Every cache of a folder takes its split from the folder's split record
(features/cache/split_record.py), so a fresh cache and a grown one agree by construction; what is
left to measure is how far a class's held-out counts drift from round(fraction x class size) when
images arrive in batches. Each history starts a class at a few images and grows it in random steps to its final size; at
every step the record is extended by features.cache.split.folder_split, as extract does. Prints the
worst and mean deviation (in images) of the test and val counts per class, over all steps.

    python bench/split.py --histories 200 --steps 10
    python bench/split.py --histories 100 --steps 60     # many small additions
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from features.cache.split import TEST, VAL, _share, folder_split  # noqa: E402

SIZES = (3, 4, 5, 7, 10, 15, 25, 40, 100, 742, 1016)   # small classes, and flowers5's extremes


def history(sizes, rng, test_size: float, val_size: float, steps: int,
            start_fraction: float) -> list[np.ndarray]:
    """Grow one folder (a class per size), first split at `start_fraction` of each class (3
    images at least), in `steps` random additions; per step, the deviation of each class's
    (test, val) count from its target share."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    paths = [f"c{y}/{rng.integers(1 << 60):x}.jpg" for y in labels]
    start = np.concatenate([np.flatnonzero(labels == y)[:max(3, int(start_fraction * n))]
                            for y, n in enumerate(sizes)])
    rest = rng.permutation(np.setdiff1d(np.arange(len(labels)), start))
    cuts = np.sort(rng.choice(np.arange(1, len(rest)), size=min(steps, len(rest) - 1),
                              replace=False))
    record: dict = {}
    out = []
    for stop in [0, *cuts, len(rest)]:
        seen = np.sort(np.r_[start, rest[:stop]])
        codes = folder_split([paths[i] for i in seen], labels[seen], record,
                             test_size=test_size, val_size=val_size, seed=0)
        record.update(zip((paths[i] for i in seen), codes.tolist()))
        dev = []
        for y in range(len(sizes)):
            mine = codes[labels[seen] == y]
            dev.append([abs(int((mine == code).sum()) - _share(f, len(mine)))
                        for code, f in ((TEST, test_size), (VAL, val_size))])
        out.append(np.asarray(dev))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--histories", type=int, default=200)
    p.add_argument("--steps", type=int, default=10, help="additions per history (default 10)")
    p.add_argument("--start-fraction", type=float, default=0.3,
                   help="share of each class in the folder's first split (default 0.3)")
    p.add_argument("--test-size", type=float, default=0.2)
    p.add_argument("--val-size", type=float, default=0.1)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    runs = [history(SIZES, rng, args.test_size, args.val_size, args.steps, args.start_fraction)
            for _ in range(args.histories)]
    stack = np.stack([d for run in runs for d in run])      # (steps, classes, [test, val])
    first = np.stack([run[0] for run in runs])
    print(f"{args.histories} histories: first split at {args.start_fraction:g} of each class, "
          f"then {args.steps} random additions, classes of {SIZES} images at the end; test "
          f"{args.test_size:g}, val {args.val_size:g}")
    print("deviation from round(fraction x class size), in images, over every step:")
    for k, name in enumerate(("test", "val")):
        worst = stack[..., k].max(axis=0)
        print(f"  {name}: worst {int(stack[..., k].max())}, mean {stack[..., k].mean():.3f}; "
              "worst per class size: "
              + ", ".join(f"{n}:{int(w)}" for n, w in zip(SIZES, worst)))
    print(f"the first splits alone (train_test_split): worst {int(first.max())}, mean "
          f"{first.mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

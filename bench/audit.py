"""How well `audit` finds planted near-duplicates, swapped labels and odd images.

    python bench/planted.py --data ../shared/data/flowers5 --out /tmp/planted --seed 0
    python cli.py extract --data /tmp/planted --backbone mobilenet --alpha 0.25 \
        --weights ../shared/weights/mobilenet_2_5_224_tf_no_top.h5 --pool avg --out /tmp/planted.h5
    python bench/audit.py --features /tmp/planted.h5 [--threshold 0.2]

Reads the planted folder's manifest.json (bench/planted.py) beside the cache's class folders and
prints: recall of the planted copies (a copy counts as found when it lands in its source's
near-duplicate group), per way of copying; the pairs found between two original photos (neither
planted: real near-duplicates of the data set or wrong pairs, to be looked at); the planted
swaps among the first 2 x their number of the label-error ranking; where the odd images rank as
outliers; and the same recall at other thresholds (how the stated one was chosen). `--sheet
FILE.png` also draws a random sample of the pairs between original photos, to look at.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np


def copy_recall(cache, manifest, groups) -> dict:
    """Found planted copies (same group as their source), overall and per way of copying."""
    row = {p: i for i, p in enumerate(cache.paths)}
    found: dict[str, list[bool]] = {}
    for item in manifest["copies"]:
        a, b = row[item["source"]], row[item["copy"]]
        found.setdefault(item["how"], []).append(bool(groups[a] == groups[b]))
    every = [x for hits in found.values() for x in hits]
    return {"recall": float(np.mean(every)), "n": len(every),
            "by_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(found.items())}}


def original_pairs(cache, manifest, pairs) -> list[tuple[int, int, float]]:
    """Pairs found between two photos neither of which is a planted copy."""
    planted = {cache.paths.index(c["copy"]) for c in manifest["copies"]}
    planted |= {cache.paths.index(p) for p in manifest.get("odd", [])}
    return [(int(a), int(b), float(s)) for a, b, s in zip(pairs.a, pairs.b, pairs.score)
            if a not in planted and b not in planted]


def swap_recall(cache, manifest, issues) -> dict:
    swapped = {cache.paths.index(s["path"]) for s in manifest["swaps"]}
    top = {int(i) for i in issues.ranked[:2 * len(swapped)]}
    flagged = set(np.flatnonzero(issues.flagged).tolist())
    return {"n": len(swapped), "in_top_2n": round(len(swapped & top) / len(swapped), 3),
            "flagged": int(issues.flagged.sum()),
            "swaps_flagged": round(len(swapped & flagged) / len(swapped), 3)}


def odd_ranks(cache, manifest, scores, flagged_rows) -> dict:
    order = np.argsort(-scores, kind="stable")
    rank = {int(r): i + 1 for i, r in enumerate(order)}
    flagged = {int(r) for r in flagged_rows}
    return {p: {"rank": rank[cache.paths.index(p)], "flagged": cache.paths.index(p) in flagged}
            for p in manifest.get("odd", [])}


def sweep(graph, cache, manifest, thresholds) -> list[dict]:
    """Copy recall and pairs between originals at each threshold (the choice of the default)."""
    from features.audit import duplicates as dup

    out = []
    for t in thresholds:
        pairs = dup.scored_pairs(graph, t)
        groups = dup.group_ids(len(cache), pairs)
        same = sum(cache.labels[a] == cache.labels[b]
                   for a, b, _ in original_pairs(cache, manifest, pairs))
        out.append({"threshold": t, **copy_recall(cache, manifest, groups),
                    "original_pairs_same_class": int(same)})
    return out


def contact_sheet(cache, pairs, path: str, n: int = 24, seed: int = 1) -> None:
    """A PNG of n random pairs (side by side, score below) for a person to judge."""
    from PIL import Image, ImageDraw

    root, size = cache.provenance().data_dir, 112
    rng = np.random.default_rng(seed)
    pick = [pairs[i] for i in sorted(rng.choice(len(pairs), min(n, len(pairs)), replace=False))]
    sheet = Image.new("RGB", (4 * (2 * size + 8), 6 * (size + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (a, b, score) in enumerate(pick):
        x, y = (k % 4) * (2 * size + 8), (k // 4) * (size + 14)
        for j, row in enumerate((a, b)):
            with Image.open(os.path.join(root, cache.paths[row])) as image:
                sheet.paste(image.convert("RGB").resize((size, size)), (x + j * size, y))
        draw.text((x, y + size), f"#{k + 1} score {score:.2f}", fill="black")
    sheet.save(path)


def main(argv=None) -> None:
    from features.audit import duplicates as dup
    from features.audit.index import load_or_build
    from features.audit.run import GRAPH_K, AuditOptions, find_all
    from features.cache.store import Cache

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--features", required=True)
    p.add_argument("--threshold", type=float, default=dup.THRESHOLD)
    p.add_argument("--sheet", default=None, metavar="FILE.png")
    args = p.parse_args(argv)
    with Cache(args.features) as cache:
        manifest_path = os.path.join(cache.provenance().data_dir, "manifest.json")
        with open(manifest_path) as handle:
            manifest = json.load(handle)
        layer, layers = cache.select_layers(None)
        started = time.perf_counter()
        found = find_all(cache, layer, layers, AuditOptions(threshold=args.threshold),
                         say=lambda *a: None)
        seconds = time.perf_counter() - started
        originals = original_pairs(cache, manifest, found.pairs)
        same = sum(cache.labels[a] == cache.labels[b] for a, b, _ in originals)
        result = {
            "features": args.features, "n_images": len(cache), "threshold": args.threshold,
            "audit_seconds": round(seconds, 2),
            "copies": copy_recall(cache, manifest, found.groups),
            "original_pairs": {"n": len(originals), "same_class": int(same)},
            "swaps": swap_recall(cache, manifest, found.issues),
            "odd": odd_ranks(cache, manifest, found.outlier_score, found.outlier_rows),
            "sweep": sweep(load_or_build(cache, layer, layers).graph(GRAPH_K), cache, manifest,
                           (0.1, 0.15, 0.2, 0.25, 0.3)),
        }
        if args.sheet and originals:
            contact_sheet(cache, originals, args.sheet)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

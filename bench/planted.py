"""A copy of an image folder with planted near-duplicates and swapped labels, and its manifest.

    python bench/planted.py --data ../shared/data/flowers5 --out /tmp/planted [--copies 100]
        [--swaps 100] [--seed 0]

Every class folder is copied (hard links where the file system allows), then:
- `copies` source photos each get one near-copy beside them in their class, made one of four
  ways in turn: `resized` (down to 60 % of each side, JPEG q90), `reencoded` (JPEG quality 25),
  `cropped` (a random crop keeping 80 % of each side, 64 % of the area, JPEG q90) and `flipped`
  (mirrored left-right, JPEG q90);
- `swaps` other photos (never a copy's source) are moved into a random other class folder;
- three odd images join the first class: a blank grey frame, a "screenshot" (black text on
  white) and uniform noise.
`manifest.json` lists them ({"copies": [{"source", "copy", "how"}], "swaps": [{"path", "was",
"now"}], "odd": [paths]}, paths relative to the new folder), which bench/audit.py scores the
audit against.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np

HOW = ("resized", "reencoded", "cropped", "flipped")
CROP_SIDE = 0.8


def _copy_tree(data: str, out: str) -> dict[str, list[str]]:
    """Class folder -> sorted image names, copied (linked when possible) from `data` to `out`."""
    classes = {}
    for name in sorted(os.listdir(data)):
        folder = os.path.join(data, name)
        if not os.path.isdir(folder) or name.startswith("."):
            continue
        os.makedirs(os.path.join(out, name), exist_ok=True)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg",
                                                                            ".png")))
        for file in files:
            target = os.path.join(out, name, file)
            try:
                os.link(os.path.join(folder, file), target)
            except OSError:
                shutil.copyfile(os.path.join(folder, file), target)
        classes[name] = files
    return classes


def near_copy(source: str, target: str, how: str, rng) -> None:
    """Write a near-copy of the image `source` to `target` (JPEG), made `how` (see HOW)."""
    from PIL import Image, ImageOps

    with Image.open(source) as image:
        image = image.convert("RGB")
        quality = 90
        if how == "resized":
            image = image.resize((max(1, int(image.width * 0.6)), max(1, int(image.height * 0.6))),
                                 Image.BILINEAR)
        elif how == "reencoded":
            quality = 25
        elif how == "cropped":
            w, h = int(image.width * CROP_SIDE), int(image.height * CROP_SIDE)
            left = int(rng.integers(0, image.width - w + 1))
            top = int(rng.integers(0, image.height - h + 1))
            image = image.crop((left, top, left + w, top + h))
        elif how == "flipped":
            image = ImageOps.mirror(image)
        else:
            raise ValueError(f"unknown copy kind {how!r}")
        image.save(target, format="JPEG", quality=quality)


def _odd_images(folder: str, cls: str, rng) -> list[str]:
    """A blank frame, a text "screenshot" and noise, written into `folder`; their paths."""
    from PIL import Image, ImageDraw

    blank = Image.new("RGB", (227, 227), (128, 128, 128))
    shot = Image.new("RGB", (227, 227), "white")
    draw = ImageDraw.Draw(shot)
    for line in range(14):
        draw.text((6, 4 + 16 * line), "File  Edit  View  Help  0123456789"[: 12 + line], fill="black")
    noise = Image.fromarray(rng.integers(0, 256, (227, 227, 3), dtype=np.uint8))
    names = []
    for name, image in (("odd_blank.png", blank), ("odd_screenshot.png", shot),
                        ("odd_noise.png", noise)):
        image.save(os.path.join(folder, name))
        names.append(f"{cls}/{name}")
    return names


def plant(data: str, out: str, copies: int = 100, swaps: int = 100, seed: int = 0) -> dict:
    """Make the planted folder at `out` (which must not exist); returns the manifest."""
    if os.path.exists(out):
        raise SystemExit(f"{out} exists; pass a new --out")
    rng = np.random.default_rng(seed)
    classes = _copy_tree(data, out)
    pool = [(c, f) for c, files in classes.items() for f in files]
    chosen = rng.choice(len(pool), size=copies + swaps, replace=False)
    manifest = {"data": os.path.abspath(data), "seed": seed, "copies": [], "swaps": []}
    for n, i in enumerate(chosen[:copies]):
        cls, file = pool[i]
        how = HOW[n % len(HOW)]
        name = f"{os.path.splitext(file)[0]}__{how}.jpg"
        near_copy(os.path.join(out, cls, file), os.path.join(out, cls, name), how, rng)
        manifest["copies"].append({"source": f"{cls}/{file}", "copy": f"{cls}/{name}",
                                   "how": how})
    names = sorted(classes)
    for i in chosen[copies:]:
        cls, file = pool[i]
        other = names[(names.index(cls) + 1 + int(rng.integers(len(names) - 1))) % len(names)]
        os.replace(os.path.join(out, cls, file), os.path.join(out, other, file))
        manifest["swaps"].append({"path": f"{other}/{file}", "was": cls, "now": other})
    manifest["odd"] = _odd_images(os.path.join(out, names[0]), names[0], rng)
    with open(os.path.join(out, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)
    return manifest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--copies", type=int, default=100)
    p.add_argument("--swaps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    manifest = plant(args.data, args.out, args.copies, args.swaps, args.seed)
    print(f"{args.out}: {len(manifest['copies'])} planted copies, {len(manifest['swaps'])} "
          f"swapped labels, {len(manifest['odd'])} odd images; manifest.json beside the class "
          "folders")


if __name__ == "__main__":
    main()

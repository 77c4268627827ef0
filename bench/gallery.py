"""The mistakes gallery of a report in a real browser (headless Chromium, Debian's `chromium`).

    python bench/gallery.py [--n 10000] [--out bench_gallery] [--missing 3]
    python bench/gallery.py --data ../shared/data/flowers5      # real photos, every image a row

Draws a test split of N images (bottleneck/data/synthetic.py, four classes, one named `<b>&x` to
exercise escaping), makes up probabilities with about a quarter wrong, deletes a few of the
chosen mistakes' files (an image moved after extraction), writes the gallery page the reports
write (features/reports/mistakes.py), then opens it in headless
Chromium: `--dump-dom` of a copy with a small script that writes every image's naturalWidth into
the DOM (0 = did not load), and a
`--screenshot`. Prints the page's size, the seconds to render it and the loaded / missing counts.
`check_page(path)` is what tests/test_mistakes.py uses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

PROBE = ("<script>window.addEventListener('load',function(){var o=document.createElement('pre');"
         "o.id='img-widths';o.textContent=JSON.stringify(Array.from(document.images)"
         ".map(function(i){return i.complete?i.naturalWidth:0}));"
         "document.body.appendChild(o)});</script>")


def chromium() -> str | None:
    """The Chromium binary, or None when it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-dev-shm-usage", "--virtual-time-budget=5000"]
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(base + [f"--user-data-dir={profile}"] + args, capture_output=True,
                              text=True, timeout=timeout, check=False)


def check_page(path: str, screenshot: str | None = None, window: str = "1000,2400",
               timeout: int = 120) -> dict:
    """Open `path` in headless Chromium: {"widths": naturalWidth of every <img> in page order
    (0: did not load), "n_img": how many <img> the page has}; with `screenshot` also a PNG."""
    with open(path, encoding="utf-8") as handle:
        page = handle.read()
    with tempfile.TemporaryDirectory() as tmp:
        probed = os.path.join(tmp, "probed.html")
        with open(probed, "w", encoding="utf-8") as handle:
            handle.write(page.replace("</body>", PROBE + "</body>") if "</body>" in page
                         else page + PROBE)
        done = _run(["--dump-dom", "file://" + probed], timeout)
    found = re.search(r'<pre id="img-widths">(.*?)</pre>', done.stdout, re.DOTALL)
    if not found:
        raise RuntimeError(f"chromium printed no image widths (rc {done.returncode}): "
                           f"{done.stderr[-800:]}")
    if screenshot:
        _run([f"--screenshot={os.path.abspath(screenshot)}", f"--window-size={window}",
              "file://" + os.path.abspath(path)], timeout)
    return {"widths": json.loads(found.group(1)), "n_img": page.count("<img ")}


def make_case(out: str, n: int, missing: int, seed: int = 0) -> tuple[dict, str]:
    """(gallery_data of a made-up n-image test split, data folder)."""
    from PIL import Image

    from bottleneck.data.synthetic import draw
    from features.reports.mistakes import gallery_data

    names = ["stripes", "checks", "<b>&x", "dots"]
    patterns = ["stripes", "checks", "rings", "dots"]
    rng = np.random.default_rng(seed)
    data = os.path.join(out, "data")
    y = np.repeat(np.arange(4), int(np.ceil(n / 4)))[:n]
    paths = []
    for i, label in enumerate(y):
        rel = os.path.join(names[label].replace("/", "_"), f"{i:05d}.png")
        os.makedirs(os.path.join(data, os.path.dirname(rel)), exist_ok=True)
        Image.fromarray(draw(patterns[label], 64, rng)).save(os.path.join(data, rel))
        paths.append(rel)
    logits = rng.normal(size=(n, 4)) * 2
    logits[np.arange(n), y] += 2.5
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    gallery = gallery_data(y, proba, names, paths=paths, data_dir=data)
    for m in gallery["top_mistakes"][-missing:] if missing else []:
        os.remove(os.path.join(data, m["path"]))
    return gallery, data


def folder_case(root: str, seed: int = 0) -> tuple[dict, str]:
    """(gallery_data of every image of a class-per-folder tree as the test split, with made-up
    probabilities, about a third wrong; the folder). Nothing is deleted."""
    from bottleneck.data.images import class_folders
    from features.reports.mistakes import gallery_data

    names = class_folders(root)
    paths = sorted(os.path.join(name, f) for name in names
                   for f in os.listdir(os.path.join(root, name)))
    y = np.array([names.index(p.split(os.sep)[0]) for p in paths])
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), len(names))) * 2
    logits[np.arange(len(y)), y] += 2.5
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return gallery_data(y, proba, names, paths=paths, data_dir=root), root


def main(argv=None) -> dict:
    from features.reports.mistakes import render_page

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--missing", type=int, default=3)
    ap.add_argument("--out", default="bench_gallery")
    ap.add_argument("--data", help="a class-per-folder tree of real images to use instead")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    if args.data:
        gallery, _ = folder_case(args.data)
        args.missing = 0
    else:
        gallery, _ = make_case(args.out, args.n, args.missing)
    drawn = time.time() - started
    started = time.time()
    page = os.path.join(args.out, "mistakes.html")
    with open(page, "w", encoding="utf-8") as handle:
        handle.write(render_page(gallery, "Mistakes: bench"))
    written = time.time() - started
    started = time.time()
    seen = check_page(page, screenshot=os.path.join(args.out, "mistakes.png"))
    result = {"n_test": gallery["gallery"]["n_test"], "n_wrong": gallery["gallery"]["n_wrong"],
              "shown": len(gallery["top_mistakes"]), "missing": args.missing,
              "page_kb": round(os.path.getsize(page) / 1024, 1),
              "draw_seconds": round(drawn, 1), "write_seconds": round(written, 2),
              "browser_seconds": round(time.time() - started, 1),
              "img_tags": seen["n_img"], "loaded": sum(w > 0 for w in seen["widths"]),
              "screenshot": os.path.join(args.out, "mistakes.png")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

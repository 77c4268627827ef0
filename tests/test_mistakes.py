"""The mistakes gallery (features/reports/mistakes.py) and fit's report that shows it: fast, no
network."""

import base64
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix

from bench.gallery import check_page, chromium
from bottleneck.data.synthetic import make_image_folder
from features.cache.store import Cache
from features.heads.headfile import load_head
from features.heads.run import FitOptions, fit_one
from features.reports.mistakes import (
    LIMIT,
    gallery_data,
    most_confused,
    render_fragment,
    render_page,
    thumbnail_uri,
    top_mistakes,
)

from .helpers import blobs, write_synthetic_cache

NAMES = ["stripes", "<b>&x", "rings"]
URI = re.compile(r'<img src="(data:image/jpeg;base64,([A-Za-z0-9+/=]+))"')


def _random_case(n=300, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, n), rng.dirichlet(np.ones(k) * 0.5, size=n)


def test_top_mistakes_are_exactly_the_most_confident_wrong_predictions():
    y, proba = _random_case()
    pred = proba.argmax(1)
    confidence = proba[np.arange(len(y)), pred]
    wrong = np.flatnonzero(pred != y)
    ranked = sorted(wrong, key=lambda i: (-confidence[i], i))
    chosen = top_mistakes(y, proba, limit=20)
    assert list(chosen) == ranked[:20]
    assert confidence[np.setdiff1d(wrong, chosen)].max() <= confidence[chosen].min()
    assert list(top_mistakes(y, proba, limit=10**6)) == ranked   # all of them, no right ones
    # ties: the earlier row first
    tied = np.array([[0.2, 0.8], [0.2, 0.8], [0.9, 0.1]])
    assert list(top_mistakes([0, 0, 1], tied)) == [2, 0, 1]


def test_most_confused_counts_equal_the_confusion_matrix_off_diagonal():
    y, proba = _random_case(seed=1)
    names = list("abcde")
    matrix = confusion_matrix(y, proba.argmax(1), labels=range(5))
    pairs = most_confused(matrix, names, limit=None)
    off = {(names[i], names[j]): int(matrix[i, j]) for i in range(5) for j in range(5)
           if i != j and matrix[i, j]}
    assert {(p["true"], p["predicted"]): p["count"] for p in pairs} == off
    assert len(pairs) == len(off)
    counts = [p["count"] for p in pairs]
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) == int(np.sum(proba.argmax(1) != y))
    assert most_confused(matrix, names, limit=3) == pairs[:3]
    # gallery_data records the same pairs, capped, and the uncapped count
    data = gallery_data(y, proba, names, paths=[f"{i}.png" for i in range(len(y))],
                        pairs_limit=4)
    assert data["most_confused"] == pairs[:4] and data["gallery"]["n_pairs"] == len(pairs)


@pytest.fixture()
def folder(tmp_path):
    """15 drawn images in 3 class folders; one renamed to need escaping; (root, rel paths, y)."""
    root = make_image_folder(str(tmp_path / "data"), n_per_class=5, size=48,
                             patterns=("stripes", "checks", "rings"))
    odd = os.path.join("checks", 'q"<s>&.png')
    os.rename(os.path.join(root, "checks", "checks_000.png"), os.path.join(root, odd))
    paths = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, files in os.walk(root) for f in files)
    y = np.array([("stripes", "checks", "rings").index(p.split(os.sep)[0]) for p in paths])
    return root, paths, y


def _all_wrong(y, k=3):
    """Every prediction wrong, with distinct confidences (row i: 0.9 - 0.01 i)."""
    proba = np.full((len(y), k), 0.0)
    for i, label in enumerate(y):
        conf = 0.9 - 0.01 * i
        proba[i, (label + 1) % k] = conf
        proba[i, label] = (1 - conf) / 2
        proba[i, (label + 2) % k] = (1 - conf) / 2
    return proba


def _images(fragment):
    return URI.findall(fragment)


def test_gallery_html_one_thumbnail_per_mistake_escaped_and_capped(folder):
    root, paths, y = folder
    proba = _all_wrong(y)
    odd = paths.index(os.path.join("checks", 'q"<s>&.png'))
    proba[odd] = [0.0, 0.01, 0.99]   # the most confident mistake
    data = gallery_data(y, proba, NAMES, paths=paths, data_dir=root, limit=6)
    mistakes = data["top_mistakes"]
    assert len(mistakes) == 6 and data["gallery"]["n_wrong"] == 15
    assert mistakes[0]["path"] == os.path.join("checks", 'q"<s>&.png')
    assert mistakes[0]["true"] == "<b>&x" and mistakes[0]["predicted"] == "rings"
    assert mistakes[0]["probability"] == pytest.approx(0.99)
    assert mistakes[0]["true_probability"] == pytest.approx(0.01)
    assert [m["probability"] for m in mistakes[1:]] == pytest.approx(
        [0.9 - 0.01 * i for i in range(15) if i != odd][:5])
    assert all(not os.path.isabs(m["path"]) for m in mistakes)
    json.dumps(data)   # metrics.json material

    fragment = render_fragment(data)
    images = _images(fragment)
    assert len(images) == fragment.count("<img ") == 6
    for _, b64 in images:
        thumb = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        assert thumb.format == "JPEG" and max(thumb.size) <= 96 and thumb.mode == "RGB"
    # class names and paths are escaped, never raw markup
    assert "&lt;b&gt;&amp;x" in fragment and "<b>&x" not in fragment
    assert "q&quot;&lt;s&gt;&amp;.png" in fragment and 'q"<s>' not in fragment
    assert "capped at 6" in fragment and "of 15 wrong among 15 test images" in fragment
    page = render_page(data, "Mistakes: <b>&x")
    assert page.startswith("<!doctype html>") and "<title>Mistakes: &lt;b&gt;&amp;x</title>" in page


def test_missing_or_corrupt_images_are_listed_without_a_thumbnail(folder):
    root, paths, y = folder
    data = gallery_data(y, _all_wrong(y), NAMES, paths=paths, data_dir=root, limit=5)
    gone, broken = (os.path.join(root, m["path"]) for m in data["top_mistakes"][1:3])
    os.remove(gone)
    with open(broken, "wb") as handle:
        handle.write(b"not an image")
    fragment = render_fragment(data)
    assert len(_images(fragment)) == 3
    assert "no thumbnail: image not found" in fragment
    assert "no thumbnail: image unreadable" in fragment
    assert "2 of 5 images could not be read" in fragment
    assert thumbnail_uri(gone) == (None, "image not found")
    # the whole data folder moved: every row stays, none has a thumbnail
    fragment = render_fragment(data, data_dir=str(os.path.join(root, "moved")))
    assert len(_images(fragment)) == 0 and fragment.count('class="mistake"') == 5


def test_page_stays_light_for_a_10000_image_test_split(folder):
    root, paths, _ = folder
    rng = np.random.default_rng(0)
    n = 10_000
    y = rng.integers(0, 3, n)
    proba = rng.dirichlet(np.ones(3), size=n)
    data = gallery_data(y, proba, NAMES, paths=[paths[i % len(paths)] for i in range(n)],
                        data_dir=root)
    page = render_page(data, "big")
    assert len(data["top_mistakes"]) == LIMIT and data["gallery"]["n_wrong"] > 5000
    assert len(_images(page)) == LIMIT
    assert f"capped at {LIMIT} images" in page
    assert len(page) < 400_000 and len(json.dumps(data)) < 20_000


@pytest.mark.parametrize("route", ["memory", "out-of-core"])
def test_fit_report_holds_the_gallery_of_the_saved_head(folder, tmp_path, route):
    root, paths, y = folder
    X, _ = blobs(n_per_class=5, k=3, d=6, sep=0.4, seed=3)
    X = X + y[:, None] * 0.3    # barely separable: some test images are wrong
    split = np.array([2, 0, 0, 1, 0] * 3, dtype=np.uint8)   # one val, one test image a class...
    split[[1, 6, 11]] = 2                                   # ... and two more test images
    cache = write_synthetic_cache(tmp_path / "c.h5", {"f": X}, y, NAMES, split=split,
                                  data_dir=root, paths=paths)
    report = tmp_path / "rep"
    summary = fit_one("logistic", FitOptions(features=cache, out=str(tmp_path / "h.joblib"),
                                             report=str(report), folds=2, route=route),
                      say=lambda *a: None)
    metrics = json.loads((report / "metrics.json").read_text())
    head = load_head(str(tmp_path / "h.joblib"))
    with Cache(cache) as c:
        test = np.flatnonzero(c.split_mask("test"))
        proba = head["pipeline"].predict_proba(c.features(["f"], test))
        expected = gallery_data(c.labels[test], proba, NAMES, data_dir=root,
                                paths=[c.paths[i] for i in test])
    assert summary["report"]["mistakes"] == str(report / "mistakes.html")
    assert metrics["top_mistakes"], "the case should have test mistakes to show"
    assert [m["path"] for m in metrics["top_mistakes"]] == [
        m["path"] for m in expected["top_mistakes"]]
    assert [m["probability"] for m in metrics["top_mistakes"]] == pytest.approx(
        [m["probability"] for m in expected["top_mistakes"]])
    assert metrics["gallery"]["n_wrong"] == round((1 - metrics["accuracy"]) * metrics["n"])
    matrix = np.array(metrics["confusion_matrix"])
    assert sum(p["count"] for p in metrics["most_confused"]) == matrix.sum() - np.trace(matrix)
    page = (report / "mistakes.html").read_text()
    assert len(_images(page)) == len(metrics["top_mistakes"])
    # the data moved after fitting: the report is still written, rows without thumbnails
    shutil.move(root, root + "-moved")
    again = render_page(metrics, "moved")
    assert len(_images(again)) == 0
    assert again.count('class="mistake"') == len(metrics["top_mistakes"])


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed")
def test_gallery_images_load_in_headless_chromium(folder, tmp_path):
    root, paths, y = folder
    data = gallery_data(y, _all_wrong(y), NAMES, paths=paths, data_dir=root, limit=8)
    os.remove(os.path.join(root, data["top_mistakes"][3]["path"]))
    page = tmp_path / "mistakes.html"
    page.write_text(render_page(data, "Mistakes: <b>&x"))
    seen = check_page(str(page), screenshot=str(tmp_path / "shot.png"))
    assert seen["n_img"] == 7 and len(seen["widths"]) == 7
    assert all(w > 0 for w in seen["widths"]), seen    # every thumbnail decoded in the browser
    assert Image.open(tmp_path / "shot.png").size == (1000, 2400)

"""predict over a large folder streams: the walk is lazy, rows go to --out as they come, and the
memory a run holds does not grow with the images (a stand-in predictor, no network)."""

from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from bottleneck.cli import main
from bottleneck.data.images import walk_images
from bottleneck.predict import predictor as predictor_module
from bottleneck.predict.predictor import Predictor, collect_images
from features.errors import UserError

BATCH = 8


def make_images(root, n, per_folder=25):
    """n tiny PNGs, `per_folder` to a folder (a folder's names are listed whole by the walk)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = os.path.join(root, f"f{i // per_folder:03d}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"img_{i:05d}.png"))
    return str(root)


@pytest.fixture()
def stand_in(monkeypatch):
    """A Predictor over 8 px images whose probabilities follow the mean pixel; records how many
    images the walk had yielded when the first batch was predicted."""
    seen = {"walked": 0, "at_first_batch": None}
    walk = predictor_module.iter_inputs

    def counting(inputs):
        for path in walk(inputs):
            seen["walked"] += 1
            yield path

    def predict_images(images):
        if seen["at_first_batch"] is None:
            seen["at_first_batch"] = seen["walked"]
        p = images.reshape(len(images), -1).mean(axis=1, keepdims=True) / 255.0
        return np.hstack([p, 1 - p])

    fake = Predictor("head", "stand-in.joblib", ["light", "dark"], 8, predict_images, {})
    monkeypatch.setattr(predictor_module, "iter_inputs", counting)
    monkeypatch.setattr(predictor_module, "load_predictor", lambda *a, **k: fake)
    return seen


def _predict(folder, *flags):
    return main(["predict", folder, "--model", "stand-in.joblib", "--batch-size", str(BATCH),
                 *flags])


def test_the_walk_is_read_one_batch_at_a_time(stand_in, tmp_path):
    folder = make_images(tmp_path / "img", 60)
    assert _predict(folder, "--out", str(tmp_path / "p.jsonl")) == 0
    assert stand_in["walked"] == 60 and stand_in["at_first_batch"] == BATCH
    assert not isinstance(collect_images([folder]), (list, tuple))


def test_out_rows_equal_the_printed_rows(stand_in, tmp_path, capsys):
    folder = make_images(tmp_path / "img", 30)
    (tmp_path / "img" / "f000" / "zz_broken.png").write_bytes(b"not a png")
    assert _predict(folder, "--json") == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert _predict(folder, "--out", str(tmp_path / "p.jsonl"), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    written = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert written == printed and len(written) == 31
    assert summary["n"] == 30 and summary["n_failed"] == 1
    assert sum(summary["counts"].values()) == 30
    assert _predict(folder, "--out", str(tmp_path / "p.csv")) == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["path"] for r in rows] == [r["path"] for r in printed]
    assert [r["label"] or None for r in rows] == [r["label"] for r in printed]
    assert sorted(os.listdir(tmp_path)) == ["img", "p.csv", "p.jsonl"]   # no temporary left


def _peak(folder, out):
    tracemalloc.start()
    try:
        assert _predict(folder, "--out", out) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_images(stand_in, tmp_path, monkeypatch):
    """Peak Python memory of 400 images is that of 100: only a batch (and one folder's names)
    is held; a list of all rows or paths would add tens of bytes per image. Decoding is stubbed:
    TensorFlow's eager ops leave garbage cycles whose size depends on when gc runs."""
    monkeypatch.setattr(predictor_module, "load_inputs", lambda predictor, chunk: (
        np.zeros((len(chunk), 8, 8, 3), np.float32), list(range(len(chunk))), []))
    small = make_images(tmp_path / "small", 100)
    large = make_images(tmp_path / "large", 400)
    _peak(small, str(tmp_path / "warm.csv"))   # first-call allocations (imports, caches)
    base = _peak(small, str(tmp_path / "s.csv"))
    grown = _peak(large, str(tmp_path / "l.csv")) - base
    batch_bytes = BATCH * 8 * 8 * 3 * 4
    assert grown < 4 * batch_bytes + 5_000, (base, grown)


def test_out_with_another_extension_is_refused_before_work(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--model", "x.joblib", "--out",
                 str(tmp_path / "p.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".csv or .jsonl" in err[0]


def test_the_walk_lists_each_file_once_whatever_the_links(tmp_path):
    """Overlapping inputs, a link to a file in the same folder, two links to one outside folder,
    a link to a file listed later: each image once, under its own name where it has one."""
    root = make_images(tmp_path / "img", 6, per_folder=3)
    outside = make_images(tmp_path / "outside", 2)
    os.symlink(os.path.join(root, "f000", "img_00002.png"), os.path.join(root, "f000", "a.png"))
    os.symlink(os.path.join(root, "f001", "img_00004.png"), os.path.join(root, "f000", "b.png"))
    os.symlink(os.path.join(outside, "f000"), os.path.join(root, "f001", "x"))
    os.symlink(os.path.join(outside, "f000"), os.path.join(root, "f001", "y"))
    os.symlink(os.path.join(root, "missing.png"), os.path.join(root, "f001", "gone.png"))
    names = [os.path.relpath(p, root) for p in predictor_module.iter_inputs(
        [root, os.path.join(root, "f001")])]
    assert sorted(names) == sorted(
        ["f000/img_00000.png", "f000/img_00001.png", "f000/img_00002.png", "f000/b.png",
         "f001/img_00003.png", "f001/img_00005.png", "f001/gone.png",
         "f001/x/img_00000.png", "f001/x/img_00001.png"])
    assert walk_images(root)[0] == [os.path.join(root, n) for n in names]


def test_no_images_is_refused(tmp_path):
    with pytest.raises(UserError, match="no images"):
        collect_images([str(tmp_path)])

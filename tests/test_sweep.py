"""sweep: stage ends of real bodies, and a probe that finds the low layer on colour-coded data."""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from bottleneck.backbones.registry import build_body, get_backbone
from bottleneck.backbones.stages import blocks, stage_ends, unfreeze_point
from bottleneck.cli import main
from features.cache.store import Cache

from .helpers import run_cli

TINY = ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32"]


def make_colour_folder(root, n_per_class=12, size=32, shift=20.0, noise=60.0, seed=0):
    """4 classes that differ only in a small shift of mean colour, under strong random texture:
    a colour average (what a low layer's pooled features keep) separates them, deep random
    features of the texture do not."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    directions = np.array([[1, -1, 0], [-1, 1, 0], [0, -1, 1], [0, 1, -1]], dtype=float)
    for c, direction in enumerate(directions):
        os.makedirs(os.path.join(root, f"colour{c}"), exist_ok=True)
        for i in range(n_per_class):
            mean = 128 + shift * direction + rng.normal(0, 5, 3)
            texture = (rng.normal(0, noise, (size, size, 1)) * rng.uniform(0.5, 1.5, 3)
                       + rng.normal(0, noise / 3, (size, size, 3)))
            image = np.clip(mean + texture, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(os.path.join(root, f"colour{c}", f"{i:03d}.png"))
    return root


def test_stage_ends_mobilenet_and_resnet50():
    mobilenet = build_body(get_backbone("mobilenet"), weights=None, image_size=224)
    assert [n for n, _ in stage_ends(mobilenet)] == [
        "conv_pw_1_relu", "conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu",
        "conv_pw_13_relu"]
    assert unfreeze_point(mobilenet, 1)[0] == "conv_dw_12"
    resnet = build_body(get_backbone("resnet50"), weights=None, image_size=224)
    assert [n for n, _ in stage_ends(resnet)] == [
        "conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
        "conv5_block3_out"]
    assert unfreeze_point(resnet, 1)[0] == "conv5_block1_1_conv"
    assert unfreeze_point(resnet, 2)[0] == "conv4_block1_1_conv"
    # a tiny input keeps the same stages (sizes 16, 8, 4, 2, 1)
    small = build_body(get_backbone("mobilenet"), weights=None, image_size=32, alpha=0.25)
    assert [n for n, _ in stage_ends(small)] == [n for n, _ in stage_ends(mobilenet)]
    assert len(blocks(small)) == 5


def test_sweep_finds_a_low_layer_reading_one_layer_at_a_time(tmp_path, monkeypatch, capsys):
    data = make_colour_folder(str(tmp_path / "colours"))
    calls = []
    original = Cache.features

    def spy(self, layer, rows=None, flatten=True):
        calls.append(layer)
        assert isinstance(layer, str) and layer in self.layers
        return original(self, layer, rows, flatten)

    monkeypatch.setattr(Cache, "features", spy)
    out = tmp_path / "sweep"
    assert main(["sweep", "--data", data, *TINY, "--out-dir", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)

    names = [r["layer"] for r in summary["layers"]]
    assert names == ["conv_pw_1_relu", "conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu",
                     "conv_pw_13_relu"]
    assert calls == names  # each layer read once, alone
    assert [r["index"] for r in summary["layers"]] == sorted(r["index"] for r in summary["layers"])
    assert [r["dim"] for r in summary["layers"]] == [16, 32, 64, 128, 256]
    best = summary["best_layer"]
    assert best != "conv_pw_13_relu" and names.index(best) <= 1, summary["layers"]
    scores = {r["layer"]: r["cv_mean"] for r in summary["layers"]}
    assert scores[best] > scores["conv_pw_13_relu"] + 0.2
    assert summary["lower_wins"] is True and summary["best_is_last"] is False
    assert summary["command"].endswith(f"--layer {best}")
    assert "extract --data" in summary["command"] and "--weights none" in summary["command"]
    for key in ("plot", "json", "csv"):
        assert os.path.getsize(summary[key]) > 0
    with open(summary["plot"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(summary["csv"]) as handle:
        assert [r["layer"] for r in csv.DictReader(handle)] == names
    with open(summary["json"]) as handle:
        assert json.load(handle)["best_layer"] == best
    # the probe saw the train split only
    with Cache(summary["cache"]) as cache:
        assert summary["n_train"] == int(cache.split_mask("train").sum()) < len(cache)

    # --layer overrides the stage ends; a re-run with the same settings reuses its cache
    assert main(["sweep", "--data", data, *TINY, "--out-dir", str(out), "--layer",
                 "conv_pw_2_relu", "--layer", "conv_pw_13_relu", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in again["layers"]] == ["conv_pw_2_relu", "conv_pw_13_relu"]


def test_sweep_bad_input_is_one_line(tmp_path):
    proc = run_cli("sweep", "--data", tmp_path / "missing", *TINY, "--folds", "1")
    assert proc.returncode == 2 and "--folds must be at least 2" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_sweep_help_says_unlike_data_prefers_lower_layers():
    proc = run_cli("sweep", "--help")
    text = " ".join(proc.stdout.split())  # argparse wraps at the terminal's width
    assert proc.returncode == 0 and "unlike ImageNet" in text and "prefers a lower layer" in text


def test_sweep_caches_of_two_folders_with_one_name_differ(tmp_path):
    """`a/images` then `b/images` used to share one cache name, so the second was refused as
    'already holds a different cache'."""
    from bottleneck.explore.sweep import SweepOptions, cache_name

    row = get_backbone("mobilenet")
    names = {cache_name(SweepOptions(data=str(tmp_path / d / "images"), weights="none"), row,
                        0.25, 32, ["5", "9"]) for d in ("a", "b")}
    assert len(names) == 2 and all(n.startswith("images_mobilenet-a0.25_32_") for n in names)

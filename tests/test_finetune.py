"""Stage 3 (finetune/export): transplant equality, frozen layers, BatchNorm, training, resume.

Tiny on purpose: MobileNet 0.25 with random weights at 32 px on a few dozen synthetic images.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bottleneck.data.synthetic import make_image_folder
from bottleneck.extract import ExtractOptions, run_extract
from bottleneck.finetune.source import Head
from features.errors import UserError
from features.tf import keras  # noqa: F401  (quiet TensorFlow import)

PATTERNS = ("stripes", "checks", "rings", "dots")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    folder = make_image_folder(str(root / "img"), n_per_class=12, size=40, patterns=PATTERNS,
                               seed=1)
    # a fixed random-init weights file, so the rebuilt network is the extraction network
    keras.utils.set_random_seed(0)
    weights = str(root / "mobilenet_a025_random.weights.h5")
    _calibrated_random_mobilenet(folder).save_weights(weights)
    caches = {}
    for key, kwargs in {"avg": dict(pool="avg"),
                        "none2": dict(pool="none", layers=("conv_pw_12_relu", "conv_pw_13_relu")),
                        }.items():
        out = str(root / f"{key}.h5")
        run_extract(ExtractOptions(data=folder, backbone="mobilenet", alpha=0.25, weights=weights,
                                   image_size=32, out=out, progress=False, test_size=0.25,
                                   val_size=0.25, **kwargs), say=lambda *a: None)
        caches[key] = out
    return {"root": root, "folder": folder, "caches": caches}


def _calibrated_random_mobilenet(folder):
    """Random MobileNet 0.25 whose BN moving statistics are set from real images, layer by layer,
    so activations keep a sane scale (plain random init shrinks them to ~1e-18 at the top)."""
    import glob

    from bottleneck.data.images import load_batch

    body = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3),
                                        alpha=0.25)
    images, _, _ = load_batch(sorted(glob.glob(os.path.join(folder, "*", "*.png")))[::3], 32)
    x = keras.applications.mobilenet.preprocess_input(images)
    for layer in body.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            h = keras.Model(body.inputs, layer.input)(x).numpy()
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2)) + 1e-3])
    return body


def _cache(path):
    from features.cache.store import Cache

    return Cache(path)


def _fold_linear(pipeline):
    """StandardScaler -> PCA -> LogisticRegression as one dense softmax op (test's own folding)."""
    scaler, pca, clf = (pipeline.named_steps[k] for k in ("scaler", "pca", "clf"))
    w = (pca.components_ / scaler.scale_[None, :]).T            # (d, k)
    b = -(scaler.mean_ / scaler.scale_) @ pca.components_.T - pca.mean_ @ pca.components_.T
    kernel = w @ clf.coef_.T
    bias = b @ clf.coef_.T + clf.intercept_
    return [{"op": "dense", "kernel": kernel.astype("float32"), "bias": bias.astype("float32"),
             "activation": "softmax"}]


def _mlp_spec(pipeline):
    scaler, mlp = pipeline.named_steps["scaler"], pipeline.named_steps["clf"]
    spec = [{"op": "l2"}]
    for i, (k, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        if i == 0:  # fold the scaler into the first layer
            b = b - (scaler.mean_ / scaler.scale_) @ k
            k = k / scaler.scale_[:, None]
        last = i == len(mlp.coefs_) - 1
        spec.append({"op": "dense", "kernel": k.astype("float32"), "bias": b.astype("float32"),
                     "activation": "softmax" if last else "relu"})
    return spec


def _heads(cache):
    """(name, spec, predict_proba) for each head shape, fitted with real scikit-learn."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    rows = np.flatnonzero(cache.split_mask("train"))
    X, y = cache.features(cache.layers, rows), cache.labels[rows]
    lin = Pipeline([("scaler", StandardScaler()), ("pca", PCA(8, random_state=0)),
                    ("clf", LogisticRegression(max_iter=500))]).fit(X, y)
    mlp_inner = Pipeline([("scaler", StandardScaler()),
                          ("clf", MLPClassifier((16, 8), max_iter=300, random_state=0))])
    mlp = make_pipeline(Normalizer(), mlp_inner).fit(X, y)
    return [("logistic+scaler+pca", _fold_linear(lin), lin.predict_proba),
            ("l2+mlp", _mlp_spec(mlp_inner), mlp.predict_proba)]


@pytest.mark.parametrize("key", ["none2"])
def test_transplant_equals_head(data, key):
    from bottleneck.backbones.network import feature_model_from_provenance
    from bottleneck.finetune.transplant import apply_spec, build_network, transplant_check

    cache = _cache(data["caches"][key])
    prov = cache.provenance()
    for name, spec, proba in _heads(cache):
        # the spec itself reproduces the sklearn head on cached features...
        rows = np.flatnonzero(cache.split_mask("test"))
        X = cache.features(cache.layers, rows)
        assert np.abs(apply_spec(spec, X) - proba(X)).max() < 1e-4, name
        # ...and the network on the images reproduces it too
        model, _ = feature_model_from_provenance(prov)
        net = build_network(model, spec, cache.class_names)
        check = transplant_check(net, cache, rows, prov.data_dir, proba)
        assert check["n"] == len(rows)
        assert check["agreement"] >= 0.995, (name, check)
        assert check["max_abs_prob_diff"] <= 1e-3, (name, check)


def test_bad_spec_refused(data):
    from bottleneck.backbones.network import feature_model_from_provenance
    from bottleneck.finetune.transplant import build_network

    cache = _cache(data["caches"]["avg"])
    model, _ = feature_model_from_provenance(cache.provenance())
    with pytest.raises(UserError, match="softmax"):
        build_network(model, [{"op": "dense", "kernel": np.zeros((256, 4)), "bias": np.zeros(4),
                               "activation": "relu"}], cache.class_names)
    with pytest.raises(UserError, match="other features"):
        build_network(model, [{"op": "dense", "kernel": np.zeros((10, 4)), "bias": np.zeros(4),
                               "activation": "softmax"}], cache.class_names)


REAL_HEADS = [("logistic", "standard", 8, "avg", None),
              ("svm", "l2+standard", None, "avg", None),
              ("sgd", "l2", None, "none2", None),
              ("mlp", "standard", 8, "none2", ["conv_pw_13_relu"])]


@pytest.mark.parametrize("kind,scaling,pca,key,layers", REAL_HEADS)
def test_transplant_equals_real_head(data, tmp_path, kind, scaling, pca, key, layers):
    """Every linear/MLP head kind of stage 2 (with scaling and PCA folded in), transplanted."""
    heads = pytest.importorskip("features.heads.kinds")
    from bottleneck.backbones.network import feature_model_from_provenance
    from bottleneck.finetune.options import FinetuneOptions
    from bottleneck.finetune.source import head_feature_layers, load_head_spec, open_cache
    from bottleneck.finetune.transplant import build_network, transplant_check
    from features.heads.headfile import make_bundle, save_head

    cache = _cache(data["caches"][key])
    layers = layers or list(cache.layers)
    tr, va = cache.split_mask("train"), cache.split_mask("val")
    pipe, info = heads.fit_head(
        kind, cache.features(layers, tr), cache.labels[tr],
        cache.features(layers, va), cache.labels[va], scaling=scaling, pca=pca, folds=2,
        grid={}, mlp_params={"hidden": 16, "max_epochs": 30} if kind == "mlp" else None)
    path = save_head(str(tmp_path / f"{kind}.joblib"), make_bundle(
        kind, pipe, cache.provenance(), ",".join(layers), layers, {"cv_mean": info["cv_mean"]}))
    head = load_head_spec(path)
    opened = open_cache(FinetuneOptions(), head)
    assert head_feature_layers(head, opened) == layers
    model, _ = feature_model_from_provenance(opened.provenance().with_taps(layers))
    net = build_network(model, head.spec, opened.class_names)
    rows = np.flatnonzero(opened.split_mask("test"))
    check = transplant_check(net, opened, rows, opened.provenance().data_dir,
                             head.predict_proba, layers)
    assert check["agreement"] >= 0.995 and check["max_abs_prob_diff"] <= 1e-3, (kind, check)


def test_real_kernel_svm_refused(data, tmp_path):
    heads = pytest.importorskip("features.heads.kinds")
    from bottleneck.finetune.source import load_head_spec
    from features.heads.headfile import make_bundle, save_head

    cache = _cache(data["caches"]["avg"])
    tr = cache.split_mask("train")
    pipe, _ = heads.fit_head("svm-rbf", cache.features(cache.layers, tr), cache.labels[tr], folds=2,
                             grid={})
    path = save_head(str(tmp_path / "rbf.joblib"), make_bundle(
        "svm-rbf", pipe, cache.provenance(), cache.layers[0], cache.layers, {}))
    with pytest.raises(UserError, match="--head-init random"):
        load_head_spec(path)


def _weak_head(cache, seed=0):
    from bottleneck.finetune.transplant import random_spec

    d = sum(cache.feature_dim(layer) for layer in cache.layers)
    spec = random_spec(d, len(cache.class_names), seed)
    spec[0]["kernel"] *= 0.01
    return Head(spec=spec, provenance=cache.provenance(), kind="test")


def test_finetune_trains_keeps_frozen_and_bn_and_resumes(data, tmp_path):

    from bottleneck.backbones.network import feature_model_from_provenance
    from bottleneck.finetune.options import FinetuneOptions
    from bottleneck.finetune.recipe import schedule_lr, unfreeze_index
    from bottleneck.finetune.run import run_finetune
    from bottleneck.finetune.transplant import build_network, taps_model

    path = data["caches"]["avg"]
    cache = _cache(path)
    head = _weak_head(cache)
    out = str(tmp_path / "m.keras")
    # cosine schedule and label smoothing on: the resumed checkpoint must carry both
    opts = FinetuneOptions(features=path, epochs=2, lr=0.05, batch_size=8,
                           out=out, seed=0, check_samples=8, unfreeze_from="conv_dw_12",
                           lr_schedule="cosine", label_smoothing=0.1)
    # the starting network, to compare weights with
    model, _ = feature_model_from_provenance(cache.provenance())
    start = build_network(model, head.spec, cache.class_names)
    body0 = taps_model(start)
    unfreeze = unfreeze_index(body0, "conv_dw_12")
    result = run_finetune(opts, say=lambda *a: None, head=head)
    assert result["transplant_agreement"] >= 0.995
    assert len(result["epochs"]) == 2 and result["epochs"][0]["phase"] == "finetune"
    assert [e["lr"] for e in result["epochs"]] == pytest.approx([0.05, 0.0005])

    # the last epoch (the best checkpoint may be the untouched transplant, epoch 0)
    trained = keras.saving.load_model(str(tmp_path / "m.last.keras"))
    body1 = taps_model(trained)
    moved = 0
    for i, (a, b) in enumerate(zip(body0.layers, body1.layers)):
        assert a.name == b.name or i == 0
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            if i < unfreeze or isinstance(a, keras.layers.BatchNormalization):
                # frozen layers and every BN statistic (gamma/beta/moving mean/var): bit-identical
                np.testing.assert_array_equal(wa, wb, err_msg=a.name)
            else:
                moved += int(not np.array_equal(wa, wb))
    assert moved > 0  # the unfrozen convolutions did train
    # the family's preprocessing (a frozen 1x1 conv) never trains, whatever is unfrozen
    for a, b in zip(start.get_layer("features").get_layer("preprocess").get_weights(),
                    trained.get_layer("features").get_layer("preprocess").get_weights()):
        np.testing.assert_array_equal(a, b)

    # resume: continue from the last checkpoint for 2 more epochs
    opts2 = FinetuneOptions(**{**opts.__dict__, "epochs": 4, "resume": True})
    resumed = run_finetune(opts2, say=lambda *a: None, head=head)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3, 4]
    assert [e["lr"] for e in resumed["epochs"][2:]] == pytest.approx(
        [schedule_lr(0.05, "cosine", k, 4) for k in (2, 3)])
    assert resumed["epochs"][:2] == result["epochs"]
    state = json.load(open(str(tmp_path / "m.state.json")))
    assert state["epoch"] == 4
    report = result["report"]
    for name in ("log.csv", "training_curves.png", "metrics.json", "classification_report.txt",
                 "confusion_matrix.png", "mistakes.html"):
        assert os.path.isfile(os.path.join(report, name)), name
    with open(os.path.join(report, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["gallery"]["n_wrong"] == round((1 - metrics["accuracy"]) * metrics["n"])
    assert len(metrics["top_mistakes"]) == min(metrics["gallery"]["n_wrong"], 36)
    with open(os.path.join(report, "mistakes.html")) as handle:
        assert handle.read().count("data:image/jpeg;base64,") == len(metrics["top_mistakes"])
    assert len(open(os.path.join(report, "log.csv")).read().strip().splitlines()) == 1 + 4


def test_short_finetune_improves_over_start(data, tmp_path):
    from bottleneck.finetune.model import load_finetuned
    from bottleneck.finetune.options import FinetuneOptions
    from bottleneck.finetune.run import run_finetune

    path = data["caches"]["avg"]
    cache = _cache(path)
    out = str(tmp_path / "s.keras")
    result = run_finetune(FinetuneOptions(
        features=path, epochs=6, lr=0.05, optimizer="sgd", batch_size=8, out=out,
        check_samples=4, unfreeze_from="0"), say=lambda *a: None, head=_weak_head(cache, 1))
    start = result["initial"]["val_accuracy"]
    best_val = max(e["val_accuracy"] for e in result["epochs"])
    assert best_val > start + 0.2, (start, result["epochs"])

    predict, names, size = load_finetuned(out)
    assert names == list(cache.class_names) and size == 32
    from bottleneck.data.images import load_batch
    rows = np.flatnonzero(cache.split_mask("test"))
    images, ok, bad = load_batch([os.path.join(cache.provenance().data_dir, cache.paths[r])
                                  for r in rows], size)
    probs = predict(images)
    assert probs.shape == (len(rows), len(names))
    assert abs(float(np.mean(probs.argmax(1) == cache.labels[rows])) - result["test_accuracy"]) < 1e-6
    # README promises the saved model loads with plain Keras: a fresh Python that imports only
    # keras (not this project) loads it and gives the same probabilities
    assert_loads_with_plain_keras(out, images, probs, tmp_path)


def assert_loads_with_plain_keras(path, images, probs, tmp_path):
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", images)
    # our packages are made unimportable (pandas, when installed, probes the name `bottleneck`
    # for its own accelerator; it copes with an ImportError), so loading must need none of ours
    block = ("import sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in ('bottleneck', 'features'):\n"
             "            raise ImportError(name)\n"
             "sys.meta_path.insert(0, Block())\n")
    code = block + (
        f"import numpy as np, keras; m = keras.saving.load_model({path!r}); "
        f"np.save({str(tmp_path / 'p.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), "
        "verbose=0)); print(sorted(k for k in sys.modules if k.split('.')[0] in "
        "('bottleneck', 'features')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"   # nothing of ours was imported
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), probs, atol=1e-5)


def test_cli_random_route_with_augmentation_and_export(data, tmp_path, capsys):
    """The classic route through the CLI (warm-up then unfreeze, augmentation on), then export."""
    from bottleneck.cli import main
    from bottleneck.finetune.model import load_finetuned

    out = str(tmp_path / "r.keras")
    code = main(["finetune", "--head-init", "random", "--features", data["caches"]["avg"],
                 "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--augment",
                 "--shear", "0.1", "--out", out, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert {"transplant_agreement", "epochs", "test_accuracy"} <= set(result)
    assert result["transplant_agreement"] is None  # nothing to transplant on this route
    assert [e["phase"] for e in result["epochs"]] == ["warmup", "finetune"]
    # no --unfreeze-from: the top stage's first weighted layer, the rule (and key) advise uses
    assert result["unfreeze_from"] == "conv_dw_12"
    predict, names, size = load_finetuned(out)
    assert len(names) == len(PATTERNS)

    code = main(["predict", "--model", out, os.path.join(data["folder"], "dots"), "--json"])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines, "predict printed nothing"

    code = main(["export", out, "--out", str(tmp_path / "exp"), "--json"])
    assert code == 0
    exported = json.loads(capsys.readouterr().out)
    assert os.path.isdir(exported["saved_model"])
    assert exported["tflite"] or exported["tflite_error"]

    from features.tf import tf
    x = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype("float32")
    loaded = tf.saved_model.load(exported["saved_model"])
    served = loaded.serve(x).numpy()
    np.testing.assert_allclose(served, predict(x), atol=1e-5)


def test_average_last_saves_the_mean_of_the_last_epochs(data, tmp_path):

    from bottleneck.finetune.options import FinetuneOptions
    from bottleneck.finetune.run import run_finetune
    from features.errors import UserError

    path = data["caches"]["avg"]
    cache = _cache(path)
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    head = _weak_head(cache, 2)
    base = dict(features=path, lr=0.05, batch_size=8, seed=0, check_samples=4,
                unfreeze_from="conv_dw_12")

    # N = 1: the "average" is the last epoch itself
    one = str(tmp_path / "one.keras")
    result = run_finetune(FinetuneOptions(**base, epochs=2, average_last=1, out=one),
                          say=lambda *a: None, head=head)
    assert result["selected"] == "average" and result["averaged"]["epochs"] == [2]
    last = keras.saving.load_model(str(tmp_path / "one.last.keras"))
    np.testing.assert_allclose(keras.saving.load_model(one).predict(x, verbose=0),
                               last.predict(x, verbose=0), atol=1e-6)

    # N = 2: the saved network holds the mean of epochs 2 and 3, which is not epoch 3
    two = str(tmp_path / "two.keras")
    result = run_finetune(FinetuneOptions(**base, epochs=3, average_last=2, out=two),
                          say=lambda *a: None, head=head)
    assert result["averaged"]["epochs"] == [2, 3]
    saved = keras.saving.load_model(two)
    last = keras.saving.load_model(str(tmp_path / "two.last.keras"))
    with np.load(str(tmp_path / "two.average.npz")) as sums:
        mean = [sums[f"w{i}"] / 2 for i in range(len(sums.files) - 1)]
    by_path = {v.path: v for v in saved.weights}
    trained = [v.path for v in last.trainable_weights]
    assert len(trained) == len(mean)
    for name, value in zip(trained, mean):
        np.testing.assert_allclose(by_path[name].numpy(), value, atol=1e-6, err_msg=name)
    assert not np.allclose(saved.predict(x, verbose=0), last.predict(x, verbose=0), atol=1e-6)

    with pytest.raises(UserError, match="--average-last"):
        run_finetune(FinetuneOptions(**base, epochs=2, average_last=3, out=two))


def test_schedule_and_label_smoothing():

    from bottleneck.finetune.recipe import SmoothedSparseCrossentropy, make_loss, schedule_lr
    from features.errors import UserError

    lrs = [schedule_lr(1e-3, "cosine", k, 6) for k in range(6)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert {schedule_lr(1e-3, "constant", k, 6) for k in range(6)} == {1e-3}

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=7).astype("float32")
    y = rng.integers(0, 4, 7)
    ours = SmoothedSparseCrossentropy(0.2)(y, probs)
    stock = keras.losses.CategoricalCrossentropy(label_smoothing=0.2)(np.eye(4)[y], probs)
    np.testing.assert_allclose(float(ours), float(stock), rtol=1e-5)
    assert make_loss(0.0) == "sparse_categorical_crossentropy"
    with pytest.raises(UserError):
        make_loss(1.0)
    with pytest.raises(UserError):
        schedule_lr(1e-3, "linear", 0, 3)


def test_cli_errors_are_one_line(data, capsys):
    from bottleneck.cli import main

    assert main(["finetune", "--json"]) == 2
    assert "--from-head" in json.loads(capsys.readouterr().out)["error"]
    assert main(["finetune", "--head-init", "random", "--features", data["caches"]["avg"],
                 "--unfreeze-from", "nope", "--epochs", "1", "--json"]) == 2
    assert "--unfreeze-from" in json.loads(capsys.readouterr().out)["error"]


def test_colour_jitter_keeps_colour():
    """A small --color-jitter changes colours a little; it must not turn images grey."""
    import numpy as np

    from bottleneck.data.augment import AugmentOptions
    from bottleneck.data.augment_layers import augmentation_layers

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = x
    for layer in augmentation_layers(AugmentOptions(flip="none", rotation=0, shift=0, zoom=0,
                                                    color_jitter=0.1)):
        y = layer(y, training=True)
    y = np.asarray(y)
    chroma = lambda im: im.std(axis=-1).mean()  # noqa: E731  (0 for grey pixels)
    assert 0.7 < chroma(y) / chroma(x) < 1.4
    assert np.abs(y - x).mean() > 0.5   # and it does change them


def test_training_stream_keeps_images_extract_kept_via_pillow(tmp_path):
    """A 1-bit BMP (TensorFlow refuses it, extraction keeps it through Pillow) is in the training
    stream too, with the same pixels as prediction's loader; a broken file is dropped."""
    import numpy as np
    from PIL import Image

    from bottleneck.data.images import labelled_dataset, load_batch

    rng = np.random.default_rng(0)
    rgb = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
    paths = [str(tmp_path / n) for n in ("onebit.bmp", "plain.bmp", "photo.png", "broken.png")]
    Image.fromarray(rgb).convert("1").save(paths[0])
    Image.fromarray(rgb).save(paths[1])
    Image.fromarray(rgb).save(paths[2])
    open(paths[3], "wb").write(b"not a png")
    images = np.concatenate([x.numpy() for x, _ in labelled_dataset(paths, [0, 1, 2, 3], 16, 8)])
    want, ok, bad = load_batch(paths, 16)
    assert ok == [0, 1, 2] and [i for i, _ in bad] == [3]
    np.testing.assert_allclose(images, want, atol=1e-4)

"""predict: images through the backbone named by a head's provenance, then the head.

Tiny drawn images (32 px), MobileNet 0.25 with random weights: the point is that predict on the
images reproduces the head on their cached features, not accuracy.
"""

import csv
import json
import os
from dataclasses import replace

import numpy as np
import pytest

from bottleneck.cli import main
from bottleneck.data.synthetic import make_image_folder
from bottleneck.extract import ExtractOptions, run_extract
from features.cache.store import Cache
from features.errors import UserError
from features.heads.headfile import load_head, save_head
from features.heads.run import FitOptions, fit_one

LAYERS = ("conv_pw_13_relu", "conv_pw_11_relu")
REAL_WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "weights",
                            "mobilenet_2_5_224_tf_no_top.h5")


def weights():
    """The real MobileNet 0.25 weights when ../shared has them; else random init, made
    reproducible by seeding Keras before every network build (random weights are not saved)."""
    if os.path.isfile(REAL_WEIGHTS):
        return os.path.abspath(REAL_WEIGHTS)
    from features.tf import keras
    keras.utils.set_random_seed(0)
    return "none"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("p")
    data = make_image_folder(str(root / "images"), n_per_class=8, size=32,
                             patterns=("stripes", "rings", "dots"), seed=0)
    cache = str(root / "f.h5")
    run_extract(ExtractOptions(data=data, backbone="mobilenet", alpha=0.25, weights=weights(),
                               image_size=32, pool="avgmax", layers=LAYERS, out=cache,
                               progress=False, test_size=0.25, val_size=0.0), say=lambda *a: None)
    head = str(root / "head.joblib")
    fit_one("logistic", FitOptions(features=cache, out=head, folds=2, layer="all"),
            say=lambda *a: None)
    return {"root": root, "data": data, "cache": cache, "head": head}


def _cached(fitted):
    bundle = load_head(fitted["head"])
    with Cache(fitted["cache"]) as cache:
        X = cache.features(bundle["provenance"].feature_layers, np.arange(len(cache)))
        paths = [f"{fitted['data']}/{p}" for p in cache.paths]
    return bundle, paths, bundle["pipeline"].predict_proba(X)


def test_predict_folder_equals_head_on_cached_features(fitted, capsys):
    bundle, paths, proba = _cached(fitted)
    names = list(bundle["provenance"].class_names)
    weights()
    assert main(["predict", fitted["data"], "--model", fitted["head"], "--json",
                 "--top-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = {row["path"]: row for row in lines}
    assert sorted(got) == sorted(paths)
    for path, p in zip(paths, proba):
        row = got[path]
        assert row["label"] == names[int(np.argmax(p))]
        assert len(row["top_k"]) == 2 and row["top_k"][0][0] == row["label"]
        assert row["top_k"][0][1] == pytest.approx(float(p.max()), abs=1e-4)


def test_unreadable_images_are_reported_and_csv(fitted, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    one = f"{fitted['data']}/rings/rings_000.png"
    out_csv = tmp_path / "p.csv"
    assert main(["predict", str(bad), one, str(tmp_path / "missing.png"), "--model",
                 fitted["head"], "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert "broken.jpg: cannot read" in out and "missing.png: cannot read" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [bool(r["error"]) for r in rows] == [True, False, True]
    assert rows[1]["label"] in ("stripes", "rings", "dots")


def test_predict_refuses_bad_models(fitted, tmp_path, capsys):
    keras_file = tmp_path / "m.keras"
    keras_file.write_bytes(b"x")
    assert main(["predict", fitted["data"], "--model", str(keras_file)]) == 2
    assert "finetune" in capsys.readouterr().err
    bundle = load_head(fitted["head"])
    bundle["provenance"] = replace(bundle["provenance"],   # a layer the network lacks
                                   feature_layers=("conv_pw_12_relu",))
    save_head(str(tmp_path / "wrong.joblib"), bundle)
    with pytest.raises(UserError, match="layers"):
        from bottleneck.predict.predictor import load_predictor

        load_predictor(str(tmp_path / "wrong.joblib"))
    assert main(["predict", fitted["data"], "--model", str(tmp_path / "nothing.joblib")]) == 2


def test_fit_refuses_head_cache_mismatch_via_check(fitted):
    from features.heads.headfile import check_head_matches

    bundle = load_head(fitted["head"])
    with Cache(fitted["cache"]) as cache:
        check_head_matches(bundle, cache)
        prov = cache.provenance()
    with pytest.raises(UserError, match="pool.*weights|weights.*pool"):
        check_head_matches(bundle, replace(prov, pool="avg", weights="imagenet"))


def test_predict_csv_that_is_a_folder_is_refused_before_work(fitted, tmp_path, capsys):
    assert main(["predict", fitted["data"], "--model", fitted["head"], "--csv",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--csv" in err[0] and "is a folder" in err[0]


def test_out_file_rows_equal_the_printed_rows(fitted, tmp_path, capsys):
    """--out FILE.jsonl (the streaming path) writes exactly the rows --json prints."""
    weights()
    assert main(["predict", fitted["data"], "--model", fitted["head"], "--json"]) == 0
    printed = capsys.readouterr().out.splitlines()
    weights()
    out = tmp_path / "p.jsonl"
    assert main(["predict", fitted["data"], "--model", fitted["head"], "--out", str(out),
                 "--batch-size", "5"]) == 0
    assert out.read_text().splitlines() == printed
    assert "p.jsonl" in capsys.readouterr().out and os.listdir(tmp_path) == ["p.jsonl"]

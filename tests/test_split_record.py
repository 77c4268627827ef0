"""One split per folder, whatever a cache's history (issue 21): every cache made from a folder with
the same split flags gives each image the same split, fresh or grown, so their heads ensemble."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from bottleneck.cli import main
from bottleneck.data.synthetic import make_image_folder
from features.cache.split import assign_new_split, assign_split, folder_split
from features.cache.split_record import RECORD_DIR, SplitFlags, SplitRecord
from features.cache.store import Cache
from features.errors import UserError

from .helpers import extract

FLAGS = SplitFlags(seed=0, test_size=0.2, val_size=0.1)
TINY = ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32"]


def _splits(path) -> dict:
    with Cache(path) as c:
        return {p: int(s) for p, s in zip(c.paths, c.split)}


@pytest.fixture()
def grown(tmp_path):
    """Steps 1 and 2 of the issue: `g.h5` of a two-class folder (6 images each), then the folder
    grown by ten images per class and a third class folder, and `g.h5` grown with it."""
    pool = make_image_folder(str(tmp_path / "pool"), n_per_class=16, size=32,
                             patterns=("stripes", "checks", "rings"))
    data = tmp_path / "data"
    for cls in ("stripes", "checks"):
        os.makedirs(data / cls)
        for name in sorted(os.listdir(os.path.join(pool, cls)))[:6]:
            shutil.move(os.path.join(pool, cls, name), data / cls / name)
    g = tmp_path / "g.h5"
    extract(str(data), g, batch_size=8)
    for cls in ("stripes", "checks"):
        for name in sorted(os.listdir(os.path.join(pool, cls)))[:10]:
            shutil.move(os.path.join(pool, cls, name), data / cls / name)
    shutil.move(os.path.join(pool, "rings"), data / "rings")
    result = extract(str(data), g, batch_size=8)
    assert result["generation"] == 1 and result["n_computed"] == 36
    return {"data": str(data), "g": str(g), "tmp": tmp_path}


def _fit(cache, out, *extra) -> str:
    assert main(["fit-logistic", "--features", str(cache), "--out", str(out), "--cv", "2",
                 "--n-jobs", "1", *extra, "--json"]) == 0
    return str(out)


def _ensemble(tmp, *heads) -> int:
    return main(["ensemble", *heads, "--out", str(tmp / "e.joblib"), "--cv", "2", "--json"])


def test_a_grown_cache_and_a_fresh_one_at_another_layer_ensemble(grown, capsys):
    fresh = grown["tmp"] / "g11.h5"
    extract(grown["data"], fresh, layers=("conv_pw_11_relu",), batch_size=8)
    assert _splits(fresh) == _splits(grown["g"])
    heads = [_fit(grown["g"], grown["tmp"] / "a.joblib"), _fit(fresh, grown["tmp"] / "b.joblib")]
    capsys.readouterr()
    assert _ensemble(grown["tmp"], *heads) == 0
    assert len(json.loads(capsys.readouterr().out)["members"]) == 2


def test_a_second_backbone_of_the_grown_folder_shares_its_split(grown, capsys):
    other = grown["tmp"] / "v2.h5"
    extract(grown["data"], other, backbone="mobilenetv2", alpha=0.35, batch_size=8)
    assert _splits(other) == _splits(grown["g"])
    heads = [_fit(grown["g"], grown["tmp"] / "a.joblib"), _fit(other, grown["tmp"] / "v2.joblib")]
    assert _ensemble(grown["tmp"], *heads) == 0


def test_a_sweep_of_the_grown_folder_shares_its_split(grown, capsys):
    assert main(["sweep", "--data", grown["data"], *TINY, "--out-dir",
                 str(grown["tmp"] / "sweep"), "--folds", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert _splits(summary["cache"]) == _splits(grown["g"])
    heads = [_fit(grown["g"], grown["tmp"] / "a.joblib"),
             _fit(summary["cache"], grown["tmp"] / "s.joblib", "--layer", summary["best_layer"])]
    assert _ensemble(grown["tmp"], *heads) == 0


def test_a_cache_grown_before_the_record_is_refused_with_the_way_out(grown, capsys):
    shutil.rmtree(os.path.join(grown["data"], RECORD_DIR))   # as a cache grown by older code
    fresh = grown["tmp"] / "g11.h5"
    extract(grown["data"], fresh, layers=("conv_pw_11_relu",), batch_size=8)
    assert _splits(fresh) != _splits(grown["g"])              # first-split draw of today's folder
    heads = [_fit(grown["g"], grown["tmp"] / "a.joblib"), _fit(fresh, grown["tmp"] / "b.joblib")]
    capsys.readouterr()
    assert _ensemble(grown["tmp"], *heads) == 2
    err = capsys.readouterr().err
    assert "in another split" in err and f"--split-from {grown['g']} --overwrite" in err
    extract(grown["data"], fresh, layers=("conv_pw_11_relu",), batch_size=8,
            split_from=grown["g"], overwrite=True)
    assert _splits(fresh) == _splits(grown["g"])
    assert _ensemble(grown["tmp"], heads[0], _fit(fresh, grown["tmp"] / "b.joblib")) == 0


def test_a_grown_cache_without_a_record_seeds_it_with_its_own_split(grown):
    record = os.path.join(grown["data"], RECORD_DIR)
    shutil.rmtree(record)
    before = _splits(grown["g"])
    extract(grown["data"], grown["g"], batch_size=8)             # unchanged folder: a no-op
    assert SplitRecord.load(grown["data"], FLAGS).codes == before
    extract(grown["data"], grown["tmp"] / "fresh.h5", batch_size=8)
    assert _splits(grown["tmp"] / "fresh.h5") == before


def test_new_images_take_the_codes_the_record_gave_them_first(grown, tmp_path):
    """Images first seen by a fresh cache are split there; growing another cache later gives them
    the same codes (whichever cache sees an image first decides, for all)."""
    older = grown["tmp"] / "older.h5"
    extract(grown["data"], older, layers=("conv_pw_11_relu",), batch_size=8)
    extra = make_image_folder(str(tmp_path / "more"), n_per_class=7, size=32, seed=5,
                              patterns=("stripes",))
    for name in os.listdir(os.path.join(extra, "stripes")):
        shutil.move(os.path.join(extra, "stripes", name),
                    os.path.join(grown["data"], "stripes", "x" + name))
    extract(grown["data"], grown["tmp"] / "newest.h5", batch_size=8)   # sees them first
    extract(grown["data"], grown["g"], batch_size=8)                    # grows to them
    extract(grown["data"], older, layers=("conv_pw_11_relu",), batch_size=8)
    assert _splits(grown["g"]) == _splits(older) == _splits(grown["tmp"] / "newest.h5")


def test_an_unwritable_record_is_a_warning_naming_split_from(tiny_copy, tmp_path):
    shutil.rmtree(os.path.join(tiny_copy, RECORD_DIR), ignore_errors=True)   # copied along
    open(os.path.join(tiny_copy, RECORD_DIR), "w").close()      # a file where the folder goes
    said = []
    from bottleneck.extract import ExtractOptions, run_extract

    run_extract(ExtractOptions(data=tiny_copy, out=str(tmp_path / "f.h5"), backbone="mobilenet",
                               alpha=0.25, weights="none", image_size=32, progress=False),
                say=said.append)
    warning = [s for s in said if "split record" in s]
    assert len(warning) == 1 and f"--split-from {tmp_path / 'f.h5'}" in warning[0]


def test_a_damaged_record_is_refused_in_one_line(tiny_copy, tmp_path):
    os.makedirs(os.path.join(tiny_copy, RECORD_DIR), exist_ok=True)
    with open(os.path.join(tiny_copy, RECORD_DIR, FLAGS.file_name()), "w") as handle:
        handle.write("{not json")
    with pytest.raises(UserError, match="cannot be read.*delete it"):
        extract(tiny_copy, tmp_path / "f.h5")
    assert not os.path.exists(tmp_path / "f.h5")


def test_split_from_a_pre_split_tree_is_refused(tmp_path):
    for part in ("train", "test"):
        make_image_folder(str(tmp_path / "d" / part), n_per_class=3, size=32,
                          patterns=("dots", "rings"))
    with pytest.raises(UserError, match="train/val/test folders"):
        extract(str(tmp_path / "d"), tmp_path / "f.h5", split_from=str(tmp_path / "x.h5"))


def test_folder_split_keeps_known_codes_and_splits_the_rest_as_growth_does():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    paths = [f"c{y}/{i}.jpg" for i, y in enumerate(labels)]
    first = assign_split(labels[:40], test_size=0.2, val_size=0.1, seed=0)
    assert np.array_equal(folder_split(paths[:40], labels[:40], {}, test_size=0.2, val_size=0.1,
                                       seed=0), first)
    known = dict(zip(paths[:40], first.tolist()))
    codes = folder_split(paths, labels, known, test_size=0.2, val_size=0.1, seed=0)
    assert np.array_equal(codes[:40], first)
    assert np.array_equal(codes[40:], assign_new_split(paths[40:], labels[40:], labels[:40],
                                                       first, test_size=0.2, val_size=0.1,
                                                       seed=0))


def test_a_folder_grown_in_any_steps_splits_like_its_record(tmp_path):
    """Whatever the order images arrive in, a class's test share stays within one image of
    round(test_size x its size) and recorded codes never change."""
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], [5, 12, 40])
    paths = [f"c{y}/{i}.jpg" for i, y in enumerate(labels)]
    first = np.r_[0:3, 5:8, 17:20]                    # a first split needs 3 images per class
    order = np.r_[first, rng.permutation(np.setdiff1d(np.arange(len(paths)), first))]
    record: dict = {}
    for stop in (9, 10, 20, 33, 57):
        seen = np.sort(order[:stop])
        codes = folder_split([paths[i] for i in seen], labels[seen], record, test_size=0.2,
                             val_size=0.1, seed=0)
        for i, c in zip(seen, codes.tolist()):
            assert record.setdefault(paths[i], c) == c
    final = np.array([record[p] for p in paths])
    for y, n in zip((0, 1, 2), (5, 12, 40)):
        assert abs(int((final[labels == y] == 2).sum()) - round(0.2 * n)) <= 1

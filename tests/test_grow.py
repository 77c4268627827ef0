"""A cache that grows with its folder: only new images computed, old rows and splits kept,
removed images dropped, crash-safe updates, old heads refused only for new classes."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from features.cache.split import TEST, TRAIN, VAL, assign_new_split, hash_unit
from features.cache.store import Cache
from features.errors import UserError

from .helpers import extract, run_cli, write_synthetic_cache


def _shrink(folder, held):
    """Move the last image of each class out to `held` (they come back as 'new' images)."""
    os.makedirs(held, exist_ok=True)
    moved = []
    for cls in sorted(d for d in os.listdir(folder) if not d.startswith(".")):
        name = sorted(os.listdir(os.path.join(folder, cls)))[-1]
        os.makedirs(os.path.join(held, cls), exist_ok=True)
        shutil.move(os.path.join(folder, cls, name), os.path.join(held, cls, name))
        moved.append(f"{cls}/{name}")
    return moved


def _grow(folder, held, new_class=None):
    """Bring the held images back; optionally add a class folder (copies of another class)."""
    for cls in os.listdir(held):
        for name in os.listdir(os.path.join(held, cls)):
            shutil.move(os.path.join(held, cls, name), os.path.join(folder, cls, name))
    if new_class:
        first = sorted(d for d in os.listdir(folder) if not d.startswith("."))[0]
        shutil.copytree(os.path.join(folder, first), os.path.join(folder, new_class))


def _rows(path):
    with Cache(path) as c:
        feats = c.features(c.layers[0])
        return {p: (c.class_names[int(y)], int(s), feats[i])
                for i, (p, y, s) in enumerate(zip(c.paths, c.labels, c.split))}, c.provenance()


@pytest.fixture()
def grown(tiny_copy, tmp_path):
    """A generation-0 cache of the shrunk folder, then the folder grown (4 images back, one new
    class of 6) and one old image removed."""
    held = _shrink(tiny_copy, str(tmp_path / "held"))
    out = tmp_path / "f.h5"
    first = extract(tiny_copy, out, batch_size=4)
    before, prov0 = _rows(out)
    _grow(tiny_copy, str(tmp_path / "held"), new_class="zebra")
    gone = sorted(before)[0]
    os.remove(os.path.join(tiny_copy, gone))
    new = held + [f"zebra/{n}" for n in sorted(os.listdir(os.path.join(tiny_copy, "zebra")))]
    return {"data": tiny_copy, "out": out, "first": first, "before": before, "prov0": prov0,
            "gone": gone, "new": sorted(new)}


def test_update_computes_only_new_images_and_equals_a_fresh_extraction(grown, tmp_path):
    batches = []
    result = extract(grown["data"], grown["out"], batch_size=4, on_batch=batches.append)
    assert result["n_computed"] == len(grown["new"]) == 10
    assert len(batches) == 3                        # ceil(10 / 4) forward passes, no more
    assert result["added"] == grown["new"] and result["removed"] == [grown["gone"]]
    assert "zebra" in result["classes"] and result["generation"] == 1
    after, prov = _rows(grown["out"])
    fresh, _ = _rows(extract(grown["data"], tmp_path / "fresh.h5", batch_size=4)["path"])
    assert sorted(after) == sorted(fresh) and grown["gone"] not in after
    with Cache(grown["out"]) as a, Cache(tmp_path / "fresh.h5") as b:
        assert a.paths == b.paths and a.class_names == b.class_names
        assert np.array_equal(a.labels, b.labels)
    for path, (cls, _, feats) in after.items():
        assert cls == fresh[path][0]
        np.testing.assert_allclose(feats, fresh[path][2], atol=1e-5, rtol=1e-5)
    for path, (_, code, feats) in grown["before"].items():   # old rows: same split, same numbers
        if path != grown["gone"]:
            assert after[path][1] == code
            np.testing.assert_allclose(after[path][2], feats, atol=0, rtol=0)
    assert prov.generation == 1 and prov.lineage == (grown["prov0"].data_id,)
    assert {after[p][1] for p in grown["new"] if p.startswith("zebra/")} == {TRAIN, VAL, TEST}
    again = extract(grown["data"], grown["out"], batch_size=4)
    assert again["already_complete"] and again["n_computed"] == 0


def test_removed_images_only_are_dropped_without_computing(tiny_copy, tmp_path):
    out = extract(tiny_copy, tmp_path / "f.h5")["path"]
    os.remove(os.path.join(tiny_copy, "dots", sorted(os.listdir(os.path.join(tiny_copy,
                                                                             "dots")))[0]))
    result = extract(tiny_copy, out)
    assert result["n_computed"] == 0 and len(result["removed"]) == 1
    assert result["removed"][0].startswith("dots/") and result["added"] == []
    with Cache(out) as c:
        assert result["removed"][0] not in c.paths and len(c) == 23


def test_an_interrupted_update_keeps_the_old_cache_and_resumes(grown, tmp_path):
    def stop(n):
        if n == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        extract(grown["data"], grown["out"], batch_size=4, on_batch=stop)
    with Cache(grown["out"]) as c:                   # still the old cache, whole and readable
        assert c.provenance().data_id == grown["prov0"].data_id and len(c) == 20
    assert os.path.isdir(str(grown["out"]) + ".partial")
    batches = []
    result = extract(grown["data"], grown["out"], batch_size=4, on_batch=batches.append)
    assert result["resumed"] and result["n_computed"] == 2 and len(batches) == 1
    assert not os.path.exists(str(grown["out"]) + ".partial")
    after, _ = _rows(grown["out"])
    fresh, _ = _rows(extract(grown["data"], tmp_path / "fresh.h5", batch_size=4)["path"])
    for path in fresh:
        np.testing.assert_allclose(after[path][2], fresh[path][2], atol=1e-5, rtol=1e-5)


def test_other_flags_are_still_refused(grown):
    with pytest.raises(UserError, match="different cache"):
        extract(grown["data"], grown["out"], batch_size=4, pool="max")


def test_a_head_before_growth_is_refused_only_for_new_classes(tiny_copy, tmp_path):
    from features.heads.headfile import check_head_current, check_head_matches, load_head

    out = str(tmp_path / "f.h5")
    held = _shrink(tiny_copy, str(tmp_path / "held"))
    extract(tiny_copy, out)
    head = str(tmp_path / "h.joblib")
    fitted = run_cli("fit-logistic", "--features", out, "--out", head, "--cv", "2")
    assert fitted.returncode == 0, fitted.stderr
    bundle = load_head(head)
    _grow(tiny_copy, str(tmp_path / "held"))
    extract(tiny_copy, out)                          # images only: the head still fits
    with Cache(out) as c:
        check_head_matches(bundle, c)
    check_head_current(bundle)
    shutil.copytree(os.path.join(tiny_copy, "dots"), os.path.join(tiny_copy, "zebra"))
    extract(tiny_copy, out)
    with Cache(out) as c, pytest.raises(UserError, match="new classes: zebra.*refit"):
        check_head_matches(bundle, c)
    predicted = run_cli("predict", "--model", head, os.path.join(tiny_copy, "zebra"))
    assert predicted.returncode == 2 and "zebra" in predicted.stderr
    assert "refit" in predicted.stderr and "Traceback" not in predicted.stderr
    assert held


def test_new_split_is_stratified_deterministic_and_leaves_old_rows():
    paths = [f"c{k}/{i}.png" for k in range(3) for i in range(40)]
    labels = np.repeat(np.arange(3), 40)
    codes = assign_new_split(paths, labels, [], [], test_size=0.2, val_size=0.1, seed=0)
    for k in range(3):
        mine = codes[labels == k]
        assert (mine == TEST).sum() == 8 and (mine == VAL).sum() == 4
    order = np.random.default_rng(0).permutation(len(paths))
    shuffled = assign_new_split([paths[i] for i in order], labels[order], [], [],
                                test_size=0.2, val_size=0.1, seed=0)
    assert np.array_equal(shuffled, codes[order])   # by path, not by position
    kept = np.full(10, TEST, np.uint8)               # a class whose test share is already full
    more = assign_new_split(paths[:5], labels[:5], np.zeros(10), kept, test_size=0.2,
                            val_size=0.1, seed=0)
    assert TEST not in more
    assert 0 <= hash_unit("a.png", 0) < 1 and hash_unit("a.png", 0) != hash_unit("a.png", 1)


def test_a_cache_from_before_growth_reads_as_generation_zero(tmp_path):
    path = write_synthetic_cache(tmp_path / "old.h5", {"l": np.zeros((8, 2))}, [0, 1] * 4,
                                 ["a", "b"], split=np.zeros(8, np.uint8))
    with h5py.File(path, "a") as f:
        del f.attrs["generation"], f.attrs["lineage"]
    with Cache(path) as c:
        assert c.provenance().generation == 0 and c.provenance().lineage == ()
        assert c.summary()["generation"] == 0


def test_views_of_old_rows_are_copied_when_the_cache_grows(tiny_copy, tmp_path):
    held = _shrink(tiny_copy, str(tmp_path / "held"))
    out = extract(tiny_copy, tmp_path / "v.h5", views=2)["path"]
    with Cache(out) as c:
        old = dict(zip(c.paths, c.views(c.layers)))
    _grow(tiny_copy, str(tmp_path / "held"))
    assert extract(tiny_copy, out, views=2)["n_computed"] == len(held)
    with Cache(out) as c:
        views = c.views(c.layers)
        assert views.shape[:2] == (24, 2) and np.isfinite(views).all()
        for path, v in zip(c.paths, views):
            if path in old:
                np.testing.assert_array_equal(v, old[path])


def test_an_update_journal_without_its_cache_starts_a_full_extraction(grown):
    def stop(n):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        extract(grown["data"], grown["out"], batch_size=4, on_batch=stop)
    os.remove(grown["out"])
    result = extract(grown["data"], grown["out"], batch_size=4)
    assert result["n_images"] == 29 and result["generation"] == 0 and not result["resumed"]


def test_an_update_runs_on_worker_processes_too(tiny_copy, tmp_path):
    held = _shrink(tiny_copy, str(tmp_path / "held"))
    out = extract(tiny_copy, tmp_path / "w.h5", batch_size=2)["path"]
    _grow(tiny_copy, str(tmp_path / "held"))
    result = extract(tiny_copy, out, batch_size=2, shard_size=2, devices="2")
    assert result["n_computed"] == len(held) and result["n_images"] == 24
    fresh = extract(tiny_copy, tmp_path / "fresh.h5", batch_size=2)["path"]
    with Cache(out) as a, Cache(fresh) as b:
        assert a.paths == b.paths
        np.testing.assert_allclose(a.features(a.layers), b.features(b.layers), atol=1e-5)


def test_a_presplit_tree_grows_by_its_folders(tmp_path):
    from bottleneck.data.synthetic import make_image_folder

    data = tmp_path / "data"
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        make_image_folder(str(data / split), n_per_class=3, size=32,
                          patterns=("stripes", "dots"), seed=seed)
    out = extract(str(data), tmp_path / "f.h5")["path"]
    shutil.copy(data / "test" / "dots" / sorted(os.listdir(data / "test" / "dots"))[0],
                data / "test" / "dots" / "extra.png")
    result = extract(str(data), out)
    assert result["added"] == ["test/dots/extra.png"] and result["split"]["test"] == 7

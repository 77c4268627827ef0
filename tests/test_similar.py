"""similar: a cached image finds itself first through the network rebuilt from the cache's
provenance; unreadable images, a weights file of other provenance and a cache without paths are
each one line."""

from __future__ import annotations

import json
import os

import pytest

from .helpers import extract, run_cli

pytest.importorskip("faiss")


@pytest.fixture()
def cached(tiny_copy, tiny_weights, tmp_path):
    out = tmp_path / "c.h5"
    extract(tiny_copy, out, weights=tiny_weights)
    return tiny_copy, str(out)


def test_a_cached_image_is_its_own_nearest_neighbour(cached, tmp_path):
    data, cache = cached
    from features.cache.store import Cache

    with Cache(cache) as c:
        queries = [c.paths[0], c.paths[7]]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    done = run_cli("similar", *[os.path.join(data, q) for q in queries], bad, "--features",
                   cache, "-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = result["queries"]
    for query, row in zip(queries, rows):
        assert row["neighbours"][0]["path"] == query, row
        assert row["neighbours"][0]["similarity"] > 0.9999
        assert len(row["neighbours"]) == 3
    assert rows[2]["error"] and result["n_failed"] == 1
    assert any(line.endswith(")") and "broken.jpg: cannot read" in line
               for line in done.stderr.splitlines())


def test_similar_refuses_other_weights_and_a_cache_without_paths(cached, tmp_path):
    import h5py

    from features.tf import keras

    data, cache = cached
    image = os.path.join(data, min(os.listdir(data)))
    image = os.path.join(image, min(os.listdir(image)))
    keras.utils.set_random_seed(1)
    other = str(tmp_path / "other.weights.h5")
    keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25,
                                 input_shape=(32, 32, 3)).save_weights(other)
    done = run_cli("similar", image, "--features", cache, "--weights", other)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "sha256 differs" in done.stderr
    with h5py.File(cache, "a") as f:
        del f["paths"]
    done = run_cli("similar", image, "--features", cache)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no 'paths' dataset" in done.stderr

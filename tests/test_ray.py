"""The Ray engine (a local Ray with 2 CPUs) writes the local engine's cache and resumes its
journal. Ray start-up costs seconds: the tests are few and share one Ray."""

from __future__ import annotations

import os

import pytest

from features.journal import Journal

from .helpers import extract
from .test_scale import assert_same_cache

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_equals_the_local_route(local_ray, tiny_copy, tmp_path, monkeypatch):
    """...and the driver hands Ray one item per shard (never one per image)."""
    items = []

    def recording(rows, *a, **k):
        items.append(len(rows))
        return from_items(rows, *a, **k)

    from_items = ray.data.from_items
    monkeypatch.setattr(ray.data, "from_items", recording)
    with open(os.path.join(tiny_copy, sorted(os.listdir(tiny_copy))[0], "zz_broken.png"),
              "wb") as f:
        f.write(b"not a png")
    local = extract(tiny_copy, tmp_path / "local.h5", batch_size=4, shard_size=8)
    ours = extract(tiny_copy, tmp_path / "ray.h5", batch_size=4, shard_size=8, engine="ray")
    assert ours["n_computed"] == local["n_computed"] == 24 and ours["n_skipped"] == 1
    assert items == [4]   # 25 images, shards of 8
    assert_same_cache(local["path"], ours["path"])


def test_ray_engine_resumes_an_interrupted_journal(local_ray, tiny_folder, tmp_path):
    out = tmp_path / "f.h5"

    def interrupt_after_three(n):
        if n == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(tiny_folder, out, batch_size=2, shard_size=4, on_batch=interrupt_after_three)
    done = Journal(str(out)).done()
    assert done == 6
    resumed = extract(tiny_folder, out, batch_size=2, shard_size=4, engine="ray")
    assert resumed["resumed"] and resumed["n_computed"] == 24 - done
    whole = extract(tiny_folder, tmp_path / "whole.h5", batch_size=2)
    assert_same_cache(str(out), whole["path"])

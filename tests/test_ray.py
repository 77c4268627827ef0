"""The Ray engine (a local Ray with 2 CPUs) writes the local engine's cache and resumes its
journal. Ray start-up costs seconds: the tests are few and share one Ray."""

from __future__ import annotations

import os

import pytest

from features.cache.journal import Journal

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
    first = min(d for d in os.listdir(tiny_copy) if not d.startswith("."))   # a class folder
    with open(os.path.join(tiny_copy, first, "zz_broken.png"), "wb") as f:
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


def _kill_featurizers() -> int:
    """SIGKILL the featurizer actor processes of this test's local Ray (descendants of this
    process, matched by their Ray process title); returns how many."""
    import signal

    psutil = pytest.importorskip("psutil")

    killed = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            if "Featurizer" in " ".join(proc.cmdline()):
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
        except psutil.Error:
            continue
    return killed


def test_a_killed_worker_recomputes_no_finished_shard(local_ray, tiny_folder, tmp_path):
    """The featurizer actor is killed (SIGKILL) once two shards are journaled: whether Ray
    replaces it or the run stops and is re-run, every shard is journaled exactly once and the
    cache equals the local route's."""
    out, journaled, killed = tmp_path / "f.h5", [], []

    def kill_after_two(n):
        journaled.append(n)
        if len(journaled) == 2:
            killed.append(_kill_featurizers())

    try:
        extract(tiny_folder, out, batch_size=2, shard_size=2, engine="ray",
                on_batch=kill_after_two)
    except Exception:   # noqa: BLE001 - Ray gave up on the lost actor: resume below
        done = Journal(str(out)).done()
        assert done >= 4
        resumed = extract(tiny_folder, out, batch_size=2, shard_size=2, engine="ray",
                          on_batch=journaled.append)
        assert resumed["n_computed"] == 24 - done
    assert killed and killed[0] >= 1
    assert len(journaled) == 12   # 12 shards of 2 images, each journaled once
    whole = extract(tiny_folder, tmp_path / "whole.h5", batch_size=2)
    assert_same_cache(str(out), whole["path"])

"""Scaling out: N worker processes (one per device) give the one-device cache, and a killed
worker's run resumes computing only what was unfinished."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from features.cache.journal import Journal, Shard, plan_shards
from features.cache.store import Cache
from features.errors import UserError

from .helpers import extract


def assert_same_cache(a_path: str, b_path: str, tol=1e-5) -> None:
    """Rows, order, labels, split, skipped list and every feature dataset equal (to `tol`)."""
    with Cache(a_path) as a, Cache(b_path) as b:
        assert a.paths == b.paths
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.split, b.split)
        assert a.skipped == b.skipped
        assert a.layers == b.layers
        for layer in a.layers:
            fa, fb = a.features(layer), b.features(layer)
            assert np.abs(fa).max() > 0
            np.testing.assert_allclose(fa, fb, atol=tol, rtol=tol)


def worker_pids() -> list[int]:
    """This process's spawned multiprocessing workers (not its resource tracker)."""
    pids = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as handle:
            pids += [int(p) for p in handle.read().split()]
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"spawn_main" in handle.read():
                    found.append(pid)
        except FileNotFoundError:
            pass
    return found


def test_shards_are_whole_batches_and_cover_the_list():
    shards = plan_shards(100, batch_size=8, workers=2)
    assert shards[0] == Shard(0, 16) and shards[-1] == Shard(96, 100)
    assert [s.start for s in shards[1:]] == [s.stop for s in shards[:-1]]
    assert plan_shards(10, batch_size=4, workers=1, size=3) == [Shard(0, 3), Shard(3, 6),
                                                                   Shard(6, 9), Shard(9, 10)]


def test_two_cpu_workers_give_the_one_device_cache(tiny_copy, tmp_path):
    with open(os.path.join(tiny_copy, os.listdir(tiny_copy)[-1], "zz_broken.png"), "wb") as f:
        f.write(b"not a png")   # skipped in the last shard: its reason must reach the cache
    one = extract(tiny_copy, tmp_path / "one.h5", batch_size=3, shard_size=6, devices="1")
    two = extract(tiny_copy, tmp_path / "two.h5", batch_size=3, shard_size=6, devices="2")
    assert two["n_computed"] == one["n_computed"] == 24 and two["n_skipped"] == 1
    assert_same_cache(one["path"], two["path"])


def test_a_killed_worker_resumes_only_the_unfinished_shards(tiny_folder, tmp_path):
    out = tmp_path / "f.h5"
    killed = []

    def kill_one_worker(batches):   # SIGKILL a worker once the first batch is journaled
        if not killed:
            killed.append(worker_pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(UserError, match="exit code -9.*re-run the same command"):
        extract(tiny_folder, out, batch_size=1, shard_size=8, devices="2",
                on_batch=kill_one_worker)
    journal = Journal(str(out))
    done = journal.done()
    assert 0 < done < 24 and journal.unfinished()
    resumed = extract(tiny_folder, out, batch_size=1, shard_size=8, devices="2")
    assert resumed["resumed"] and resumed["n_computed"] == 24 - done
    whole = extract(tiny_folder, tmp_path / "whole.h5", batch_size=1, devices="1")
    assert_same_cache(str(out), whole["path"])


def test_more_devices_than_the_machine_has_is_refused_before_work(tiny_folder, tmp_path):
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(UserError, match=f"--devices {cores + 1}: this machine has no GPU"):
        extract(tiny_folder, tmp_path / "f.h5", devices=str(cores + 1))
    with pytest.raises(UserError, match="--devices 'x'"):
        extract(tiny_folder, tmp_path / "f.h5", devices="x")
    assert not os.path.exists(tmp_path / "f.h5.partial")


def test_out_of_memory_halves_the_batch_and_says_so(tiny_folder, tmp_path, monkeypatch):
    import bottleneck.extract as ex
    from bottleneck.extract import ExtractOptions, run_extract
    from features.tf import tf

    real = ex.compiled_forward

    def small_device(model):   # a device that holds at most 2 images per pass
        forward = real(model)

        def guarded(images):
            if int(images.shape[0]) > 2:
                raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating")
            return forward(images)
        return guarded

    monkeypatch.setattr(ex, "compiled_forward", small_device)
    said = []
    opts = dict(data=tiny_folder, backbone="mobilenet", alpha=0.25, weights="none",
                image_size=32, progress=False, batch_size=8)
    halved = run_extract(ExtractOptions(out=str(tmp_path / "a.h5"), **opts), say=said.append)
    assert [line for line in said if "halved" in line] == [
        "warning: out of device memory; batch size halved to 4 and the batch retried (pass "
        "--batch-size 4 next time)",
        "warning: out of device memory; batch size halved to 2 and the batch retried (pass "
        "--batch-size 2 next time)"]
    monkeypatch.setattr(ex, "compiled_forward", real)
    plain = run_extract(ExtractOptions(out=str(tmp_path / "b.h5"), **opts), say=said.append)
    assert_same_cache(halved["path"], plain["path"])


def test_engine_ray_without_ray_names_the_install(monkeypatch):
    import importlib.util

    from bottleneck.engines.ray_engine import check_ray
    from bottleneck.extract import ExtractOptions

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install -e '\.\[ray\]'"):
        check_ray(ExtractOptions(data=".", engine="ray"))

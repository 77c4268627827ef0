"""The one typed contract (features/cache/provenance.py) and the one atomic write
(features/atomic.py)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from features.atomic import atomic_path, write_json
from features.cache.provenance import COMPATIBLE_KEYS, CONTENT_KEYS, Provenance

BASE = Provenance(backbone="mobilenet", alpha=0.25, weights="none", image_size=32, pool="avg",
                  layers=("a", "b"), layer_indices=(3, 7), preprocess="mobilenet",
                  class_names=("cat", "dog"), data_dir="/data", versions={"numpy": "2"})


def test_json_round_trip_and_older_files():
    assert Provenance.from_json(BASE.to_json()) == BASE
    # caches written before the contract was one record: alpha 'none', numpy scalars, lists,
    # an empty weights_path, unknown keys
    old = {**BASE.to_json(), "alpha": "none", "image_size": np.int64(32), "weights_path": "",
           "n_images": 10, "created": "then"}
    read = Provenance.from_json(old)
    assert read.alpha is None and read.image_size == 32 and read.weights_path is None
    with pytest.raises(ValueError, match="backbone"):
        Provenance.from_json({"pool": "avg"})


def test_mismatches_name_every_key_that_differs():
    other = replace(BASE, backbone="vgg16", image_size=224, seed=3)
    diffs = BASE.mismatches(other, COMPATIBLE_KEYS)
    assert [d.split(":")[0] for d in diffs] == ["backbone", "image_size"]   # seed: not a network key
    assert "head has 'mobilenet', features have 'vgg16'" in diffs[0]
    assert [d.split(":")[0] for d in BASE.mismatches(other, CONTENT_KEYS)] == [
        "backbone", "image_size", "seed"]
    assert BASE.mismatches(replace(BASE, versions={"numpy": "3"}), CONTENT_KEYS) == []


def test_a_head_needs_only_its_own_layers():
    head = BASE.for_head("b", ["b"])
    assert head.taps == ("b",) and head.mismatches(replace(BASE, layers=("b",))) == []
    assert head.mismatches(replace(BASE, layers=("a",)))[0].startswith("layers:")
    net = BASE.with_taps(["b"])
    assert net.layers == ("b",) and net.layer_indices == (7,)


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "state.json"
    write_json(str(path), {"epoch": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "w") as handle:
                handle.write('{"epoch": 2')   # half written, then the writer dies
            raise RuntimeError("killed")
    assert path.read_text() == '{"epoch": 1}'
    assert os.listdir(tmp_path) == ["state.json"]   # no temporary left behind


def test_atomic_temporary_keeps_the_extension(tmp_path):
    with atomic_path(str(tmp_path / "m.keras")) as tmp:
        assert tmp.endswith(".tmp.keras")
        open(tmp, "w").close()
    assert os.listdir(tmp_path) == ["m.keras"]

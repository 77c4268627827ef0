"""audit: near-duplicates (within and across splits), label errors, outliers, the report and the
exclude list that fit and extract read; on small synthetic caches with planted faults."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from .helpers import run_cli, write_synthetic_cache

pytest.importorskip("faiss")
pytest.importorskip("cleanlab")


def planted_features(seed=0, n_per_class=40, k=3, d=128):
    """Non-negative 'pooled' features of k classes, then two near-copies (small noise) of rows 0
    and 1 appended, and an outlier far from everything: (X, y, copies as (source, copy))."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 2, size=(k, d))
    y = np.repeat(np.arange(k), n_per_class)
    X = np.abs(centres[y] + rng.normal(scale=1.0, size=(len(y), d)))
    copies = [(0, len(X)), (1, len(X) + 1)]
    spike = np.zeros(d)
    spike[0] = 40.0   # a 'blank frame': one activation, nothing like a photo
    X = np.vstack([X, X[0] * 1.01 + 0.003, X[1] * 0.99 + 0.003, spike])
    y = np.concatenate([y, [y[0], y[1], 0]])
    return X.astype(np.float32), y, copies


def planted_cache(tmp_path, names=("a", "b", "c")):
    """The planted features in a cache whose split puts copy 0 in test (a leak) and copy 1 in
    train beside its train source; paths name each role."""
    X, y, copies = planted_features()
    split = np.zeros(len(y), np.uint8)
    split[np.arange(2, len(y) - 3, 5)] = 2   # every fifth original photo is test
    split[np.arange(4, len(y) - 3, 10)] = 1
    split[[0, 1]] = 0
    split[copies[0][1]], split[copies[1][1]] = 2, 0
    paths = [f"{names[c]}/img{i}.png" for i, c in enumerate(y)]
    path = write_synthetic_cache(tmp_path / "c.h5", {"pool": X}, y, list(names), split=split,
                                 paths=paths)
    return path, X, y, copies, paths


def audit_graph(path):
    from features.audit.index import load_or_build
    from features.cache.store import Cache

    with Cache(path) as cache:
        return load_or_build(cache, "pool", ["pool"], say=lambda *a: None).graph(20)


def test_planted_copies_are_grouped_and_the_cross_split_one_is_a_leak(tmp_path):
    from features.audit import duplicates as dup

    path, _X, y, copies, _ = planted_cache(tmp_path)
    pairs = dup.scored_pairs(audit_graph(path))
    groups = dup.group_ids(len(y), pairs)
    assert all(groups[a] == groups[b] for a, b in copies)
    split = np.zeros(len(y), np.uint8)
    split[copies[0][1]] = 2
    found = dup.duplicate_groups(pairs, groups, split, y)
    assert sorted(sorted(g.rows) for g in found) == sorted(sorted(c) for c in copies)
    leak = next(g for g in found if copies[0][0] in g.rows)
    assert leak.cross_split and leak.keep == copies[0][0] and not leak.mixed_labels
    assert dup.leaked_rows(found, split) == [copies[0][1]]


def test_label_swaps_rank_first_and_the_outlier_is_flagged():
    from features.audit import outliers as out
    from features.audit.labels import find_label_issues

    X, y, _copies = planted_features()
    swapped = [5, 50, 95]   # one of each class, moved to the next class
    noisy = y.copy()
    noisy[swapped] = (y[swapped] + 1) % 3
    issues = find_label_issues(X, noisy, np.arange(len(y)), folds=4)
    assert set(issues.ranked[:2 * len(swapped)].tolist()) >= set(swapped)
    assert issues.flagged[swapped].sum() >= 2 and issues.flagged.sum() <= 12
    rows, _ = out.flagged(out.outlier_scores(X))
    assert rows[0] == len(y) - 1


def test_audit_writes_report_json_and_an_exclude_list_that_fit_reads(tmp_path):
    path, _X, _y, copies, paths = planted_cache(tmp_path, names=("a", "<b>&x", "c"))
    out = tmp_path / "audit"
    done = run_cli("audit", "--features", path, "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["duplicates"]["leaked"] == [paths[copies[0][1]]]
    assert result["duplicates"]["n_cross_split"] == 1
    page = (out / "audit.html").read_text()
    assert "&lt;b&gt;&amp;x" in page and "<b>&x" not in page
    listed = (out / "exclude.txt").read_text().splitlines()
    assert [line.split("  #")[0] for line in listed if not line.startswith("#")] == [
        paths[copies[0][1]]]
    plain = json.loads(run_cli("fit-logistic", "--features", path, "--out",
                               tmp_path / "h.joblib", "--json").stdout)
    fitted = run_cli("fit-logistic", "--features", path, "--out", tmp_path / "e.joblib",
                     "--exclude", out / "exclude.txt", "--json")
    assert fitted.returncode == 0, fitted.stderr
    summary = json.loads(fitted.stdout)
    assert summary["n"]["test"] == plain["n"]["test"] - 1
    assert summary["excluded"]["n"] == 1


def test_exclude_list_reading(tmp_path):
    from features.audit.exclude import excluded_rows, format_exclude, read_exclude
    from features.errors import UserError

    listed = tmp_path / "x.txt"
    listed.write_text(format_exclude([("a/1.jpg", "why # not"), ("b/2.jpg", "")])
                      + f"{tmp_path}/data/c/3.jpg\n\n# a comment\ngone/4.jpg\n")
    names = read_exclude(str(listed), str(tmp_path / "data"))
    assert names == {"a/1.jpg", "b/2.jpg", "c/3.jpg", "gone/4.jpg"}
    said = []
    assert excluded_rows(names, ["a/1.jpg", "z.jpg", "c/3.jpg", "b/2.jpg"], "x", said.append) \
        == [0, 2, 3]
    assert "1 of the 4 paths" in said[0]
    with pytest.raises(UserError, match="none of its 4 paths"):
        excluded_rows(names, ["q.jpg"], "x")
    with pytest.raises(UserError, match="no such file"):
        read_exclude(str(tmp_path / "none.txt"))


def test_index_is_kept_and_rebuilt_when_the_cache_changes(tmp_path):
    from features.audit.index import index_path, load_or_build
    from features.cache.store import Cache

    X, y, _ = planted_features()
    path = write_synthetic_cache(tmp_path / "c.h5", {"pool": X}, y, ["a", "b", "c"])
    said = []
    with Cache(path) as cache:
        first = load_or_build(cache, "pool", ["pool"], said.append)
        assert os.path.isfile(index_path(path, "pool"))
        again = load_or_build(cache, "pool", ["pool"], said.append)
        sims, rows = again.query(X[:3], 1)
        assert rows[:, 0].tolist() == [0, 1, 2] and np.allclose(sims[:, 0], 1, atol=1e-5)
    assert said == [] and first.record == again.record
    write_synthetic_cache(tmp_path / "c.h5", {"pool": X[:-5]}, y[:-5], ["a", "b", "c"])
    with Cache(path) as cache:
        assert len(load_or_build(cache, "pool", ["pool"], said.append)) == len(X) - 5
    assert "rebuilding the similarity index" in said[0]


def test_audit_refuses_bad_input_in_one_line(tmp_path):
    import h5py

    X, y, _ = planted_features()
    path = write_synthetic_cache(tmp_path / "c.h5", {"pool": X}, y, ["a", "b", "c"])
    with h5py.File(path, "a") as f:
        del f["paths"]
    for argv in (["audit", "--features", path, "--out", tmp_path / "a"],
                 ["audit", "--features", path, "--exclude-kinds", "typos"],
                 ["fit-logistic", "--features", tmp_path / "none.h5", "--exclude", "x"]):
        done = run_cli(*argv)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no 'paths'" in run_cli("audit", "--features", path).stderr


def test_extract_exclude_leaves_listed_images_out_and_drops_them_from_a_cache(tiny_copy,
                                                                               tmp_path):
    from features.cache.store import Cache

    from .helpers import extract

    full = extract(tiny_copy, tmp_path / "full.h5")
    with Cache(full["path"]) as cache:
        paths = list(cache.paths)
    listed = tmp_path / "exclude.txt"
    listed.write_text(f"{paths[0]}  # a copy\n{paths[5]}\n")
    out = tmp_path / "ex.h5"
    extract(tiny_copy, out, exclude=str(listed))
    with Cache(str(out)) as cache:
        assert cache.paths == [p for p in paths if p not in (paths[0], paths[5])]
    listed.write_text(f"{paths[0]}\n{paths[5]}\n{paths[9]}\n")
    grown = extract(tiny_copy, out, exclude=str(listed))
    assert grown["removed"] == [paths[9]]
    with Cache(str(out)) as cache:
        assert paths[9] not in cache.paths and len(cache) == len(paths) - 3

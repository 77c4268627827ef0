"""extract --dedupe-split: every near-duplicate group of the audit's groups.json lands in one
split, in a split record of its own; the cache records the rule; old codes never move."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .helpers import extract


def test_grouped_split_keeps_groups_together_and_recorded_codes():
    from features.cache.split import grouped_split

    rng = np.random.default_rng(0)
    paths = [f"c{i % 3}/{i:03d}.jpg" for i in range(300)]
    labels = np.array([i % 3 for i in range(300)])
    groups = {}
    for start in range(0, 120, 4):   # 30 groups of four images of one class
        members = [paths[start + 3 * j] for j in range(4) if start + 3 * j < 300]
        groups.update({p: members[0] for p in members})
    codes = grouped_split(paths, labels, {}, groups, test_size=0.2, val_size=0.1, seed=0)
    for key in set(groups.values()):
        assert len({codes[paths.index(p)] for p, k in groups.items() if k == key}) == 1
    # shares are drawn over groups: 40 % of these images in groups of four moves them a little
    assert abs((codes == 2).mean() - 0.2) < 0.05 and abs((codes == 1).mean() - 0.1) < 0.05
    known = {p: int(c) for p, c in zip(paths, codes) if rng.random() < 0.5}
    new_member = "c0/new.jpg"
    groups[new_member] = groups[paths[0]]
    again = grouped_split(paths + [new_member], np.append(labels, 0), known, groups,
                          test_size=0.2, val_size=0.1, seed=0)
    assert all(again[paths.index(p)] == c for p, c in known.items())
    member_codes = {int(known[p]) for p, k in groups.items() if k == groups[paths[0]]
                    and p in known}
    assert again[-1] in member_codes or not member_codes


def test_extract_dedupe_split_puts_each_group_in_one_split(tiny_copy, tmp_path):
    from features.cache.store import Cache
    from features.errors import UserError

    plain = extract(tiny_copy, tmp_path / "plain.h5")
    with Cache(plain["path"]) as cache:
        paths, split = list(cache.paths), cache.split.copy()
    # pair each test image with a train image of its class: the plain split straddles them
    pairs = []
    for i in np.flatnonzero(split == 2):
        mate = next(j for j in np.flatnonzero(split == 0) if paths[j].split("/")[0]
                    == paths[i].split("/")[0] and all(paths[j] not in p for p in pairs))
        pairs.append((paths[i], paths[mate]))
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"format": "bottleneck-groups", "format_version": 1,
                                  "groups": [list(p) for p in pairs]}))
    extract(tiny_copy, tmp_path / "grouped.h5", dedupe_split=str(groups))
    with Cache(str(tmp_path / "grouped.h5")) as cache:
        code = dict(zip(cache.paths, cache.split.tolist()))
        assert cache.provenance().split_rule.startswith("folder-record grouped (")
    assert all(code[a] == code[b] for a, b in pairs)
    with pytest.raises(UserError, match="--dedupe-split"):
        extract(tiny_copy, tmp_path / "grouped.h5")

"""The near-duplicate groups file the audit writes (groups.json) and `extract --dedupe-split`
reads, so that every group of near-identical images lands in one split.

{"format": "bottleneck-groups", "format_version": 1, "data_dir": ..., "threshold": ...,
 "groups": [[relative path, ...], ...]} (only groups of two or more images).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from features.errors import UserError, check_format_version

GROUPS_FORMAT = "bottleneck-groups"
GROUPS_VERSION = 1


@dataclass(frozen=True)
class Groups:
    source: str                      # the file they were read from
    identity: str                    # sha256 of its bytes (recorded in the cache's split_rule)
    groups: tuple[tuple[str, ...], ...]

    def key_of(self) -> dict[str, str]:
        """{path: its group's key (the group's first path in sorted order)}."""
        return {path: min(group) for group in self.groups for path in group}


def groups_json(groups, *, data_dir: str, threshold: float) -> dict:
    return {"format": GROUPS_FORMAT, "format_version": GROUPS_VERSION, "data_dir": data_dir,
            "threshold": threshold, "groups": [sorted(g) for g in groups]}


def read_groups(path: str) -> Groups:
    """The groups in the file at `path`; a missing or foreign file in one line."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        data = json.loads(raw)
    except FileNotFoundError:
        raise UserError(f"--dedupe-split {path}: no such file (`python cli.py audit` writes "
                        "groups.json)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--dedupe-split {path} cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != GROUPS_FORMAT:
        raise UserError(f"--dedupe-split {path} is not a groups file written by `audit` "
                        "(groups.json)")
    check_format_version(data.get("format_version", 0), GROUPS_VERSION, path, "groups ")
    groups = tuple(tuple(str(p) for p in g) for g in data.get("groups", []) if len(g) > 1)
    return Groups(path, "sha256:" + hashlib.sha256(raw).hexdigest()[:16], groups)

"""The split record of an image folder: which split every image of it was given, per split flags.

It is what makes the split a property of the folder rather than of one cache: every extraction
from the folder (fresh, grown, another layer or backbone, a sweep) reads the codes recorded for
its flags and records the codes it assigns to images the record lacks (split.py decides them).
It lives beside the images, `<data>/.bottleneck/split_seed<S>_test<T>_val<V>.json`, so it travels
with the folder; the image scan skips dot-folders. Codes once recorded never change.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

from features.atomic import write_json
from features.cache.split import SPLIT_NAMES
from features.errors import UserError

RECORD_FORMAT = "bottleneck-split"
RECORD_VERSION = 1
RECORD_DIR = ".bottleneck"


@dataclass(frozen=True)
class SplitFlags:
    """The flags that define a split of a folder (a record is kept per set of them)."""

    seed: int
    test_size: float
    val_size: float

    def file_name(self) -> str:
        return f"split_seed{self.seed}_test{self.test_size:g}_val{self.val_size:g}.json"


@dataclass
class SplitRecord:
    """{relative path: split code} recorded for one folder and one set of split flags."""

    path: str
    flags: SplitFlags
    codes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: str, flags: SplitFlags) -> "SplitRecord":
        """The folder's record for `flags` (empty when none was written yet)."""
        path = os.path.join(data_dir, RECORD_DIR, flags.file_name())
        return cls(path, flags, _read_codes(path, flags))

    def conflicts(self, paths, codes) -> list[tuple[str, int, int]]:
        """(path, code given, code recorded) for each image the record holds otherwise."""
        return [(p, int(c), self.codes[p]) for p, c in zip(paths, codes)
                if p in self.codes and self.codes[p] != int(c)]

    def add(self, paths, codes) -> list[tuple[str, int, int]]:
        """Record the codes of the images the record lacks (recorded ones never change), under a
        lock, re-reading the file first; returns the conflicts with what is recorded. OSError
        when the folder cannot be written."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with _locked(os.path.dirname(self.path)):
            self.codes = _read_codes(self.path, self.flags)
            missing = {p: int(c) for p, c in zip(paths, codes) if p not in self.codes}
            if missing:
                self.codes.update(missing)
                write_json(self.path, self._to_json(), indent=0)
        return self.conflicts(paths, codes)

    def _to_json(self) -> dict:
        by_split = {name: sorted(p for p, c in self.codes.items() if c == i)
                    for i, name in enumerate(SPLIT_NAMES)}
        return {"format": RECORD_FORMAT, "format_version": RECORD_VERSION,
                "seed": self.flags.seed, "test_size": self.flags.test_size,
                "val_size": self.flags.val_size, **by_split}


def _read_codes(path: str, flags: SplitFlags) -> dict[str, int]:
    """The codes in the record file at `path` ({} when there is none); a damaged or foreign file
    is refused in one line rather than silently re-split."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"the split record {path} cannot be read ({exc}); restore it, or delete "
                        "it to let the next extraction split the folder anew") from exc
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise UserError(f"{path} is not a bottleneck split record; move it away")
    if data.get("format_version", 0) > RECORD_VERSION:
        raise UserError(f"{path} was written by a newer bottleneck (split record format "
                        f"{data['format_version']}); upgrade to use this folder")
    if (data.get("seed"), data.get("test_size"), data.get("val_size")) != (
            flags.seed, flags.test_size, flags.val_size):
        raise UserError(f"{path} records another split (seed {data.get('seed')}, test "
                        f"{data.get('test_size')}, val {data.get('val_size')}); move it away")
    return {p: i for i, name in enumerate(SPLIT_NAMES) for p in data.get(name, [])}


@contextlib.contextmanager
def _locked(folder: str):
    """An exclusive advisory lock (fcntl) on the record's folder, held while the record is read
    and rewritten (a lock on the folder itself leaves no lock file behind)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing releases the lock


@dataclass(frozen=True)
class SplitSource:
    """Where a run's split codes come from: the folder's record (`record`, kept up to date as
    the run assigns codes) or another cache's split (`--split-from`, recorded nowhere)."""

    rule: str                       # how the cache's provenance names it (split_rule)
    flags: SplitFlags
    known: dict                     # {relative path: code} to keep
    record: SplitRecord | None      # None for --split-from


def resolve_split_source(data_dir: str, flags: SplitFlags, split_from: str | None) -> SplitSource:
    """The folder's record for `flags`, or with `split_from` that cache's split and split flags
    (its seed and fractions then split the images it does not hold)."""
    if not split_from:
        record = SplitRecord.load(data_dir, flags)
        return SplitSource("folder-record", flags, dict(record.codes), record)
    from features.cache.store import Cache

    if not os.path.isfile(split_from):
        raise UserError(f"--split-from {split_from}: no such cache; give the .h5 whose split "
                        "this cache must share")
    with Cache(split_from) as source:
        prov = source.provenance()
        known = {p: int(c) for p, c in zip(source.paths, source.split)}
    theirs = SplitFlags(int(prov.seed), float(prov.test_size), float(prov.val_size))
    return SplitSource(f"split-from {prov.data_id or os.path.abspath(split_from)}", theirs,
                       known, None)

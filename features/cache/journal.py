"""The crash-safe journal of an extraction in progress, from which the final cache is assembled.

`<out>.partial/plan.json` fixes the run (config, image list, labels, split, and its shards: the
contiguous ranges of the image list that workers compute independently); every finished batch
lands as one `upto_<stop>.npz` written to a temporary name and renamed, so a kill -9 at any moment
leaves only whole batches behind. A batch never crosses a shard's end, so a shard's progress is its
last batch file, and re-running the same command resumes every shard after its last batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import shutil
from dataclasses import dataclass

import numpy as np

from features.atomic import atomic_path, write_json
from features.cache.provenance import CONTENT_KEYS, Provenance
from features.errors import UserError


@dataclass(frozen=True)
class Shard:
    """Plan items [start, stop): the unit one worker computes, batch by batch, in order."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(n: int, batch_size: int, workers: int, size: int | None = None) -> list[Shard]:
    """Deterministic contiguous shards of n items: about four per worker (so a slow worker does
    not hold the end), at most 32 batches each, a whole number of batches each (so the batches
    are exactly those of an unsharded run); `size` overrides the size."""
    if size is None:
        batches = -(-n // (4 * max(1, workers) * batch_size))
        size = batch_size * min(32, max(1, batches))
    return [Shard(a, min(a + size, n)) for a in range(0, n, max(1, size))]


class Journal:
    def __init__(self, out_path: str):
        self.out_path = out_path
        self.dir = out_path + ".partial"
        self.plan: dict | None = None

    @property
    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.dir, "plan.json"))

    def load_plan(self) -> dict:
        with open(os.path.join(self.dir, "plan.json")) as handle:
            self.plan = json.load(handle)
        return self.plan

    def start(self, plan: dict) -> None:
        """Begin a fresh journal for `plan` (any older one must have been discarded first)."""
        os.makedirs(self.dir, exist_ok=True)
        write_json(os.path.join(self.dir, "plan.json"), plan)
        self.plan = plan

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self):
        """Hold the writer's lock of this output for the whole run: a second extraction into the
        same --out is refused at once, naming the process that holds it (never two writers
        interleaving batches, never a cache replaced by a fragment)."""
        path = self.out_path + ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise UserError(f"another extraction (pid {holder}) is writing {self.out_path}; "
                                "wait for it to finish, or pass another --out") from None
            if not os.path.exists(path) or os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise UserError(f"another extraction just finished writing {self.out_path}; "
                                "run the command again")
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            try:
                yield
            finally:   # removed while still held, so a run that opened it sees a stale inode
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        finally:
            os.close(fd)

    def writer(self):
        """An ordered background writer: `submit(save_batch, ...)` returns at once, so the
        network computes the next batch while this one is written; `close()` waits for all."""
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    def _shards(self) -> list[str]:
        # finished batches only: a killed write's temporary (.upto_N.tmp.npz) is not one
        return sorted(p for p in glob.glob(os.path.join(self.dir, "upto_*.npz"))
                      if re.fullmatch(r"upto_\d+\.npz", os.path.basename(p)))

    def shards(self) -> list[Shard]:
        """The run's shards as its plan fixed them (one shard for journals made before shards)."""
        plan = self.plan or self.load_plan()
        return [Shard(a, b) for a, b in plan.get("shards", [[0, len(plan["paths"])]])]

    def progress(self) -> dict[Shard, int]:
        """For each shard, the first plan item not yet journaled (its stop when finished)."""
        stops = [int(os.path.basename(p)[5:-4]) for p in self._shards()]
        return {s: max([t for t in stops if s.start < t <= s.stop], default=s.start)
                for s in self.shards()}

    def unfinished(self) -> list[Shard]:
        """What is left to compute: the unfinished rest of each shard, in plan order."""
        return [Shard(at, s.stop) for s, at in self.progress().items() if at < s.stop]

    def done(self) -> int:
        """How many plan items are finished, over all shards."""
        return sum(at - s.start for s, at in self.progress().items())

    def save_batch(self, stop: int, index, arrays: list, skipped_index, skipped_reason) -> None:
        """Record one finished batch covering plan items up to `stop` (exclusive), atomically.

        `arrays` holds one array per dataset of the plan, in the plan's order."""
        path = os.path.join(self.dir, f"upto_{stop:010d}.npz")
        dtype = ((self.plan or {}).get("provenance") or {}).get("storage") or "float32"
        arrays = {f"f{i}": np.asarray(f, dtype=dtype) for i, f in enumerate(arrays)}
        if dtype == "float16" and not all(np.isfinite(a).all() for a in arrays.values()):
            raise UserError(f"features of the batch up to image {stop} overflow float16 (beyond "
                            "+/-65504): extract them with --storage float32")
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:   # no fsync: a killed process
            np.savez(handle, index=np.asarray(index, dtype=np.int64),   # loses nothing the OS holds
                     skipped_index=np.asarray(skipped_index, dtype=np.int64),
                     skipped_reason=np.asarray(skipped_reason, dtype=str), **arrays)

    def collect(self):
        """(ok plan indices in order, [(plan index, reason)] skipped) over all finished batches."""
        ok, skipped = [], []
        for path in self._shards():
            with np.load(path) as shard:
                ok.extend(shard["index"].tolist())
                skipped.extend(zip(shard["skipped_index"].tolist(),
                                   shard["skipped_reason"].tolist()))
        return ok, skipped

    def iter_rows(self, names: list[str]):
        """Yield (row_start, {dataset name: array}) shard by shard, one shard in memory at a time."""
        row = 0
        for path in self._shards():
            with np.load(path) as shard:
                count = len(shard["index"])
                if count:
                    yield row, {name: shard[f"f{i}"] for i, name in enumerate(names)}
                row += count

    def provenance(self) -> Provenance:
        """The run's provenance as the plan recorded it (journals written before provenance was
        one record kept it as 'config' plus 'class_names')."""
        plan = self.plan or self.load_plan()
        data = plan.get("provenance") or {**plan["config"], "class_names": plan["class_names"]}
        return Provenance.from_json(data)

    def check_matches(self, provenance: Provenance) -> None:
        """Refuse to resume a journal whose run had other settings."""
        self.load_plan()
        diffs = self.provenance().mismatches(provenance, CONTENT_KEYS, mine="interrupted run",
                                             theirs="this run")
        if diffs:
            raise UserError(f"an interrupted extraction into {self.out_path} used other settings "
                            f"({'; '.join(diffs)}); re-run it as it was to resume, or add "
                            "--overwrite to start over")

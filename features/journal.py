"""The crash-safe journal of an extraction in progress, from which the final cache is assembled.

`<out>.partial/plan.json` fixes the run (config, image list, labels, split); every finished batch
lands as one `upto_<stop>.npz` written to a temporary name and renamed, so a kill -9 at any moment
leaves only whole batches behind. Re-running the same command resumes after the last one.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np

from features.errors import UserError


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
        tmp = os.path.join(self.dir, "plan.json.tmp")
        with open(tmp, "w") as handle:
            json.dump(plan, handle)
        os.replace(tmp, os.path.join(self.dir, "plan.json"))
        self.plan = plan

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def writer(self):
        """An ordered background writer: `submit(save_batch, ...)` returns at once, so the
        network computes the next batch while this one is written; `close()` waits for all."""
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    def _shards(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.dir, "upto_*.npz")))

    def done(self) -> int:
        """How many plan items (in order) are finished: everything before this index."""
        shards = self._shards()
        return int(os.path.basename(shards[-1])[5:-4]) if shards else 0

    def save_batch(self, stop: int, index, arrays: list, skipped_index, skipped_reason) -> None:
        """Record one finished batch covering plan items up to `stop` (exclusive), atomically.

        `arrays` holds one array per dataset of the plan, in the plan's order."""
        path = os.path.join(self.dir, f"upto_{stop:010d}.npz")
        arrays = {f"f{i}": np.asarray(f, dtype=np.float32) for i, f in enumerate(arrays)}
        tmp = path + ".tmp"
        with open(tmp, "wb") as handle:
            np.savez(handle, index=np.asarray(index, dtype=np.int64),
                     skipped_index=np.asarray(skipped_index, dtype=np.int64),
                     skipped_reason=np.asarray(skipped_reason, dtype=str), **arrays)
        os.replace(tmp, path)  # no fsync: a killed process loses nothing the OS already holds

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

    def check_matches(self, config_json: dict) -> None:
        plan = self.load_plan()
        if plan["config"] != config_json:
            diffs = [f"{k}: {plan['config'].get(k)!r} -> {v!r}" for k, v in config_json.items()
                     if plan["config"].get(k) != v]
            raise UserError(f"an interrupted extraction into {self.out_path} used other settings "
                            f"({'; '.join(diffs)}); re-run it as it was to resume, or add "
                            "--overwrite to start over")

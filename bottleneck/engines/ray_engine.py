"""`extract --engine ray`: the unfinished shards through Ray Data, into the same journal.

The driver hands Ray one item per unfinished shard (never one per image: at the default sizes a
million images are about a thousand shards), cut into batch ranges inside Ray; decoding runs as
Ray tasks on CPU workers, which read the paths of their range from the journal's plan; one
featurizer actor per GPU (num_gpus=1; on a cluster without GPUs, CPU actors) builds our network
once from the journal's provenance (BatchNorm folded, the run's precision, memory growth on) and
runs our traced forward function. Every row carries
its plan index, so the driver puts rows back in order whatever the scheduling, and journals each
shard, once all its rows are back, as one batch file: resume and assembly are those of the local
engine. Images and the output folder must be readable (and the output writable) at the same path
from every node: a shared filesystem.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np

from bottleneck.shards import BatchSettings, ShardCounts
from features.cache.journal import Journal, Shard
from features.errors import UserError


def check_ray(opts) -> None:
    """Refuse, before any work, what the Ray engine cannot do here."""
    if importlib.util.find_spec("ray") is None:
        raise UserError("--engine ray needs Ray, which is not installed: pip install -e '.[ray]'")
    if opts.views:
        raise UserError("--engine ray does not compute --views yet; drop --views, or use the "
                        "local engine (--devices)")


def batch_ranges(shard: dict, batch_size: int) -> list[dict]:
    """The batches of one shard as {start, stop} rows (the rows Ray Data carries: one per batch,
    never one per image)."""
    return [{"start": a, "stop": min(a + batch_size, shard["stop"])}
            for a in range(shard["start"], shard["stop"], batch_size)]


@functools.lru_cache(maxsize=2)
def _plan_paths(out: str, mtime_ns: int) -> list[str]:
    """The plan's image list, read once per worker process (and again if the plan changes)."""
    journal = Journal(out)
    return journal.load_plan()["paths"]


def decode_range(batch: dict, out: str, root: str, size: int) -> dict:
    """CPU task: the images of one {start, stop} batch of the plan, as decode_rows returns them;
    the paths are read from the journal's plan on the worker (the driver sends only ranges)."""
    plan = os.path.join(Journal(out).dir, "plan.json")
    paths = _plan_paths(out, os.stat(plan).st_mtime_ns)
    start, stop = int(batch["start"][0]), int(batch["stop"][0])
    return decode_rows({"index": np.arange(start, stop), "path": paths[start:stop]}, root, size)


def decode_rows(batch: dict, root: str, size: int) -> dict:
    """CPU task: decode and resize each image as the local engine does (TensorFlow first,
    then Pillow); an unreadable one keeps its row with ok False and the reason."""
    from bottleneck.data.images import image_from_file

    images, ok, reasons = [], [], []
    for rel in batch["path"]:
        sized, reason = image_from_file(os.path.join(root, str(rel)), (size,))
        image = sized[0] if sized is not None else None
        ok.append(image is not None)
        reasons.append(reason or "")
        images.append(image if image is not None else np.zeros((size, size, 3), np.float32))
    return {"index": batch["index"], "image": np.stack(images).astype(np.float32),
            "ok": np.asarray(ok), "reason": np.asarray(reasons, dtype=object)}


class Featurizer:
    """Ray actor: the network built once, then features for each batch of decoded rows."""

    def __init__(self, settings: BatchSettings):
        from bottleneck.backbones.network import compiled_forward, feature_model_from_provenance
        from bottleneck.shards import BatchRunner

        journal = Journal(settings.out)
        journal.load_plan()
        model, _ = feature_model_from_provenance(journal.provenance(), fold_bn=True)
        self.runner = BatchRunner(settings, journal, compiled_forward(model), 0)
        self.shapes = list(journal.plan["datasets"].values())

    def __call__(self, batch: dict) -> dict:
        keep = np.flatnonzero(batch["ok"])
        n = len(batch["ok"])
        arrays = self.runner.rows(batch["image"][keep]) if len(keep) else []
        out = {"index": batch["index"], "ok": batch["ok"], "reason": batch["reason"]}
        for k, shape in enumerate(self.shapes):
            full = np.zeros((n, *shape), np.float32)
            if len(keep):
                full[keep] = arrays[k]
            out[f"f{k}"] = full
        return out


@dataclass
class _Pending:
    """Rows of one shard received so far (the driver journals the shard once all are back)."""

    shard: Shard
    parts: list = field(default_factory=list)
    count: int = 0


def run_ray(opts, settings: BatchSettings, todo: list[Shard], on_batch, say) -> ShardCounts:
    """Compute `todo` on Ray and journal each shard as it completes."""
    import ray

    _start_ray(opts.address, say)
    journal = Journal(settings.out)
    journal.load_plan()
    shards = [{"start": s.start, "stop": s.stop} for s in todo]
    stream = _pipeline(ray, shards, settings, opts.progress)
    pending = {s.start: _Pending(s) for s in todo}
    starts, counts = sorted(pending), ShardCounts()
    n_datasets = len(journal.plan["datasets"])
    writer = journal.writer()
    futures = []
    try:
        for batch in stream.iter_batches(batch_size=None, batch_format="numpy"):
            for shard_start, part in _by_shard(batch, starts):
                entry = pending[shard_start]
                entry.parts.append(part)
                entry.count += len(part["index"])
                if entry.count == len(entry.shard):
                    futures.append(writer.submit(_journal_shard, journal, entry, n_datasets))
                    counts.computed += int(sum(p["ok"].sum() for p in entry.parts))
                    on_batch(len(entry.shard))
                    del pending[shard_start]
    finally:
        writer.shutdown(wait=True)
    for future in futures:
        future.result()
    return counts


def _start_ray(address: str | None, say) -> None:
    """Join `address`, or start a local Ray (unless this process already runs one)."""
    import ray

    if ray.is_initialized():
        return
    say(f"ray: joining {address}" if address else "ray: starting a local Ray on this machine")
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except ConnectionError as exc:
        raise UserError(f"--address {address}: cannot reach a Ray cluster there ({exc})") from exc


def _pipeline(ray, shards: list[dict], settings: BatchSettings, progress: bool):
    """Shards cut into batch ranges, each decoded on a CPU task, then one featurizer actor per
    GPU (CPU actors without GPUs)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    actors = gpus or max(1, int(resources.get("CPU", 1)) // 2)
    ds = ray.data.from_items(shards).flat_map(batch_ranges,
                                              fn_kwargs={"batch_size": settings.batch_size})
    ds = ds.map_batches(decode_range, fn_kwargs={"out": settings.out, "root": settings.root,
                                                 "size": settings.image_size},
                        batch_size=1, batch_format="numpy", num_cpus=1)
    return ds.map_batches(Featurizer, fn_constructor_kwargs={"settings": settings},
                          batch_size=settings.batch_size, batch_format="numpy",
                          concurrency=actors, num_gpus=1 if gpus else 0,
                          num_cpus=0 if gpus else 1)


def _by_shard(batch: dict, starts: list[int]):
    """Split a batch of rows into (shard start, rows) parts by their plan index."""
    owner = np.asarray([starts[bisect.bisect_right(starts, i) - 1] for i in batch["index"]])
    for start in np.unique(owner):
        rows = owner == start
        yield int(start), {k: v[rows] for k, v in batch.items()}


def _journal_shard(journal: Journal, entry: _Pending, n_datasets: int) -> None:
    """Write one finished shard as one journal batch, rows in plan order."""
    rows = {k: np.concatenate([p[k] for p in entry.parts]) for k in entry.parts[0]}
    order = np.argsort(rows["index"], kind="stable")
    rows = {k: v[order] for k, v in rows.items()}
    ok = rows["ok"].astype(bool)
    journal.save_batch(entry.shard.stop, rows["index"][ok].tolist(),
                       [rows[f"f{k}"][ok] for k in range(n_datasets)],
                       rows["index"][~ok].tolist(), [str(r) for r in rows["reason"][~ok]])

"""Stage 1: run a frozen backbone once over an image folder and cache its features in HDF5.

Work is journaled batch by batch (features/cache/journal.py) so an interrupted run resumes where it
stopped, and the cache appears under its final name only when complete (features/cache/store.py).
The run is planned first (`plan_extraction`: every flag checked, the network built, nothing
written), then confirmed against an existing cache or journal, computed, and assembled.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from bottleneck.backbones.precision import PrecisionChoice
from bottleneck.backbones.registry import (
    POOLS,
    PRECISIONS,
    check_weights_arg,
    get_backbone,
    weights_id,
)
from bottleneck.data.images import ImageFolder, scan_folder
from bottleneck.phases import Phases, since_process_start
from bottleneck.shards import BatchSettings, ShardCounts, run_shards
from bottleneck.worker import Device, count_gpus, pick_devices, run_workers, usable_cores
from features.atomic import check_writable
from features.cache.grow import Growth, growth_from_json, merge_order, merged_rows, plan_growth
from features.cache.journal import Journal, plan_shards
from features.cache.provenance import CONTENT_KEYS, Provenance
from features.cache.sizing import CachePlan, LayerSize, free_bytes, human
from features.cache.split import SPLIT_NAMES, folder_split, split_counts
from features.cache.split_record import SplitFlags, SplitSource, resolve_split_source
from features.cache.store import STORAGES, Cache, write_cache
from features.cache.versions import library_versions
from features.errors import UserError

MAX_VIEWS = 128   # views are seeded by (seed, image index * 1024 + view * 8): keep them apart
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ExtractOptions:
    """What `extract` is asked to do; checked when built, before any work."""

    data: str
    backbone: str = "vgg16"
    alpha: float | None = None
    weights: str = "imagenet"
    layers: tuple[str, ...] = ()
    pool: str = "avg"
    image_size: int | None = None   # default: the backbone's own
    batch_size: int = 32
    test_size: float = 0.2
    val_size: float = 0.1
    seed: int = 0
    out: str | None = None
    overwrite: bool = False
    precision: str = "auto"        # 'auto': float32 unless a probe measures another faster
    storage: str = "float32"        # how features are stored: float32, or float16 (half the disk)
    views: int = 0                  # augmented views per image, stored beside the plain view
    progress: bool = True
    devices: str | None = None      # 'all' (the default: every GPU, else the CPU) or a count
    shard_size: int | None = None   # images per shard (default: about four shards per worker)
    engine: str = "local"           # 'local': this machine's devices; 'ray': a Ray cluster
    address: str | None = None      # the Ray cluster to join (default: start a local Ray)
    split_from: str | None = None   # another cache whose split (and split flags) to reuse
    exclude: str | None = None      # an exclude list: images of the folder left out of the cache
    dedupe_split: str | None = None  # the audit's groups.json: each group kept in one split

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")
        if not 0 <= self.views <= MAX_VIEWS:
            raise UserError(f"--views {self.views}: must be between 0 (plain view only) and "
                            f"{MAX_VIEWS}")
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"--image-size {self.image_size}: must be a positive number of "
                            "pixels (leave it out for the backbone's own size)")
        if self.pool not in POOLS:
            raise UserError(f"--pool {self.pool!r}: choose one of {', '.join(POOLS)}")
        if self.shard_size is not None and self.shard_size < 1:
            raise UserError(f"--shard-size {self.shard_size}: must be at least 1 image")
        if self.engine not in ENGINES:
            raise UserError(f"--engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        if self.address and self.engine != "ray":
            raise UserError("--address is the Ray cluster to use: add --engine ray")
        if self.storage not in STORAGES:
            raise UserError(f"--storage {self.storage!r}: choose one of {', '.join(STORAGES)}")
        if self.precision not in ("auto", *PRECISIONS):
            raise UserError(f"--precision {self.precision!r}: choose one of auto, "
                            f"{', '.join(PRECISIONS)}")


@dataclass
class ExtractionPlan:
    """Everything a run needs, decided before anything is written."""

    opts: ExtractOptions
    folder: ImageFolder
    split: np.ndarray
    model: object                   # the Keras feature model
    provenance: Provenance
    datasets: dict                  # 'features/<layer>' (and 'views/<layer>') -> row shape
    out: str
    weights: str | None             # what build_body loaded: None, 'imagenet' or a file path
    devices: list[Device]           # one worker each (local engine)
    split_source: SplitSource | None = None   # None in a pre-split tree (its folders decide)
    precision: PrecisionChoice | None = None  # what --precision decided, and why
    phases: Phases = field(default_factory=Phases)

    def sizes(self) -> CachePlan:
        """Bytes per image per layer (plain view; x (1 + views) per image), and in all."""
        layers = tuple(LayerSize(name.split("/", 1)[1], tuple(int(d) for d in shape),
                                 self.opts.storage)
                       for name, shape in self.datasets.items() if name.startswith("features/"))
        return CachePlan(layers, len(self.folder.paths), self.opts.views)

    def settings(self) -> BatchSettings:
        """What a worker needs to compute batches (picklable)."""
        return BatchSettings(self.out, self.folder.root, self.provenance.image_size,
                             self.opts.views, self.opts.batch_size, self.opts.seed)


def default_out_path(data_dir: str, backbone: str, alpha, layers, pool, image_size) -> str:
    name = os.path.basename(os.path.abspath(data_dir).rstrip("/")) or "data"
    width = f"-a{alpha:g}" if alpha is not None else ""
    layer = layers[0] if len(layers) == 1 else f"{len(layers)}layers"
    return os.path.join("features", f"{name}_{backbone}{width}_{layer}_{pool}_{image_size}.h5")


def plan_extraction(opts: ExtractOptions, say=print, phases: Phases | None = None
                    ) -> ExtractionPlan:
    """Check every input, scan the folder, split it and build the network; writes nothing.
    Each step's seconds are added to `phases`."""
    phases = Phases() if phases is None else phases
    with phases.phase("import_tensorflow"):
        from bottleneck.backbones.network import build_feature_model, default_layer_specs
    row = get_backbone(opts.backbone)
    weights = check_weights_arg(opts.weights)
    gpus = count_gpus()
    devices = pick_devices(opts.devices, gpus, usable_cores())
    if opts.engine == "ray":
        from bottleneck.engines.ray_engine import check_ray

        check_ray(opts)
    alpha = row.resolve_alpha(opts.alpha)
    image_size = opts.image_size or row.default_size
    with phases.phase("scan_and_split"):
        folder = without_excluded(scan_folder(opts.data), opts.exclude, say)
        check_writable(opts.out or os.path.join("features", "cache.h5"))
        presplit = folder.split is not None
        source = _split_source(opts, folder)
        if source is not None:
            opts = replace(opts, seed=source.flags.seed, test_size=source.flags.test_size,
                           val_size=source.flags.val_size)
        split = folder.split if presplit else _split_of(folder, source, source.known)

    def build(precision: str, phase: str | None = "build_model"):
        """The feature network in `precision` (its seconds under `phase`, when named)."""
        with phases.phase(phase) if phase else nullcontext():
            return build_feature_model(
                row, weights=weights, image_size=image_size, alpha=alpha,
                layer_specs=list(opts.layers) or default_layer_specs(row), pool=opts.pool,
                precision=precision, fold_bn=True)

    first = "float32" if opts.precision == "auto" else opts.precision
    model, taps = build(first)
    names = [name for name, _ in taps]
    out = opts.out or default_out_path(folder.root, row.name, alpha, names, opts.pool, image_size)
    check_output_file(out, opts.overwrite)
    with phases.phase("precision_probe"):
        choice, model = _decide_precision(opts, out, model, lambda p: build(p, None), gpus,
                                          image_size)
    say(choice.sentence())
    datasets = {f"features/{n}": list(o.shape[1:]) for n, o in zip(names, model.outputs)}
    if opts.views:
        datasets.update({f"views/{n}": [opts.views, *o.shape[1:]]
                         for n, o in zip(names, model.outputs)})
    provenance = _provenance(opts, folder, row, weights, alpha, image_size, taps, choice.used,
                             source)
    return ExtractionPlan(opts, folder, split, model, provenance, datasets, out, weights, devices,
                          source, choice, phases)


def _provenance(opts: ExtractOptions, folder: ImageFolder, row, weights, alpha, image_size: int,
                taps, precision: str, source: SplitSource | None) -> Provenance:
    """The cache's record of how its features were made (a pre-split tree: no fractions)."""
    presplit = folder.split is not None
    return Provenance(
        data_dir=folder.root, backbone=row.name, alpha=alpha, weights=weights_id(weights),
        image_size=image_size, pool=opts.pool, layers=tuple(name for name, _ in taps),
        layer_indices=tuple(i for _, i in taps), preprocess=row.preprocess,
        precision=precision, storage=opts.storage, seed=opts.seed,
        class_names=tuple(folder.class_names),
        test_size=0.0 if presplit else opts.test_size, val_size=0.0 if presplit else opts.val_size,
        views=opts.views, versions=library_versions(),
        weights_path=os.path.abspath(weights) if weights not in (None, "imagenet") else None,
        split_rule=source.rule if source else "folders")


def _decide_precision(opts: ExtractOptions, out: str, model, build, gpus: int,
                      image_size: int) -> tuple[PrecisionChoice, object]:
    """(the choice, the network in that precision). An explicit --precision is used as asked;
    with auto, a cache or interrupted run at `out` keeps its own precision (its rows must match),
    otherwise the probe of bottleneck/backbones/precision.py measures the candidate."""
    from bottleneck.backbones import precision as probe

    if opts.precision != "auto":
        return PrecisionChoice(opts.precision, opts.precision, "asked"), model
    recorded = None if opts.overwrite else _recorded_precision(out)
    if recorded:
        kept = model if recorded == "float32" else build(recorded)[0]
        return PrecisionChoice("auto", recorded, "kept: the cache at --out has it"), kept
    from bottleneck.backbones.network import compiled_forward

    models = {"float32": model}
    batch = max(1, min(opts.batch_size, 4))
    candidate = probe.candidate_precision(gpus)

    def model_seconds(precision: str) -> float:
        if precision not in models:
            models[precision] = build(precision)[0]
        return probe.forward_seconds(compiled_forward(models[precision]), image_size, batch)

    key = {**probe.machine_key(), "gpus": gpus, "backbone": opts.backbone,
           "alpha": opts.alpha, "image_size": image_size, "layers": list(opts.layers),
           "pool": opts.pool, "candidate": candidate}
    choice = probe.remembered(key, lambda: probe.choose_precision(
        candidate, probe.conv_kernel_seconds, model_seconds))
    if choice.used not in models:
        models[choice.used] = build(choice.used)[0]
    return choice, models[choice.used]


def _recorded_precision(out: str) -> str | None:
    """The precision of the cache, or of the interrupted run, at `out` (None when neither)."""
    journal = Journal(out)
    if journal.exists:
        return journal.load_plan()["provenance"].get("precision") or "float32"
    if os.path.exists(out) and _is_our_cache(out):
        with Cache(out) as cache:
            return cache.provenance().precision or "float32"
    return None


def _split_source(opts: ExtractOptions, folder: ImageFolder) -> SplitSource | None:
    """The folder's split record for these flags, or --split-from's cache; None in a pre-split
    tree, whose train/val/test folders decide."""
    if folder.split is not None:
        if opts.split_from:
            raise UserError(f"--split-from: {folder.root} is split by its train/val/test "
                            "folders, which decide every image's split; leave the flag out")
        return None
    groups = None
    if opts.dedupe_split:
        from features.audit.groups import read_groups

        groups = read_groups(opts.dedupe_split)
    flags = SplitFlags(opts.seed, opts.test_size, opts.val_size, grouped=groups is not None)
    return resolve_split_source(folder.root, flags, opts.split_from, groups)


def _split_of(folder: ImageFolder, source: SplitSource, known: dict) -> np.ndarray:
    """Every image's split code: `known` ones kept, the others by
    features/cache/split.py's rules."""
    flags = source.flags
    return folder_split(folder.paths, folder.labels, known, test_size=flags.test_size,
                        val_size=flags.val_size, seed=flags.seed, groups=source.groups)


def _record_split(plan: ExtractionPlan, paths, codes, say, *, planned: bool) -> None:
    """Add this run's codes to the folder's split record. A cache that disagrees with the record
    keeps its split and is warned about; codes planned from the record that disagree with it
    now mean another run wrote it meanwhile (refused). An unwritable folder is warned about."""
    source = plan.split_source
    if source is None or source.record is None:
        return
    record = source.record.path
    try:
        conflicts = source.record.add(paths, codes)
    except OSError as exc:
        say(f"warning: cannot write the split record {record} ({exc.strerror or exc}): caches "
            f"extracted later from {plan.folder.root} may split it otherwise; pass --split-from "
            f"{plan.out} when you extract them")
        return
    if not conflicts:
        return
    path, mine, theirs = conflicts[0]
    if planned:
        raise UserError(f"the split record {record} changed while this run was planned (another "
                        "extract of this folder?); run the command again")
    say(f"warning: {len(conflicts)} image(s) of {plan.out} are in another split than the "
        f"folder's split record {record} (e.g. {path}: {SPLIT_NAMES[mine]} here, "
        f"{SPLIT_NAMES[theirs]} there); the cache keeps its split, so its heads will not "
        "ensemble with heads of caches that follow the record: re-extract it with --overwrite "
        f"to follow the record, or extract the others with --split-from {plan.out}")


def without_excluded(folder: ImageFolder, exclude: str | None, say) -> ImageFolder:
    """The folder less the images its exclude list names (said in one line); an image left out
    of a cache that holds it is removed from it, as if deleted from the folder."""
    if not exclude:
        return folder
    from features.audit.exclude import excluded_rows, read_exclude

    rows = excluded_rows(read_exclude(exclude, folder.root), folder.paths, exclude, say)
    keep = np.setdiff1d(np.arange(len(folder.paths)), rows)
    if not len(keep):
        raise UserError(f"--exclude {exclude} lists every image of {folder.root}")
    say(f"excluded: {len(rows)} images listed in {exclude}")
    return replace(folder, paths=[folder.paths[i] for i in keep], labels=folder.labels[keep],
                   split=None if folder.split is None else folder.split[keep])


def check_output_file(out: str, overwrite: bool) -> None:
    """An existing file at --out must be one of our caches (complete or not): anything else is
    never overwritten."""
    check_writable(out)
    if os.path.exists(out) and not _is_our_cache(out):
        raise UserError(f"{out} exists and is not a bottleneck feature cache; refusing to "
                        "replace it" + (" even with --overwrite" if overwrite else "")
                        + ": pass another --out")


def _is_our_cache(path: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "format_version" in f.attrs
    except OSError:
        return False


def run_extract(opts: ExtractOptions, say=print, on_batch: Callable[[int], None] | None = None
                ) -> dict:
    """Extract (or resume, or confirm) a cache; returns the run's summary as a dict.

    `on_batch(n)` is called after each journaled batch (n so far); an exception it raises
    interrupts the run exactly as Ctrl-C would, leaving a resumable journal.
    """
    started, before = time.time(), since_process_start()
    phases = Phases()
    if before is not None:
        phases.add("process_start_to_run", before)   # the interpreter and the CLI's imports
    plan = plan_extraction(opts, say, phases)
    journal = Journal(plan.out)
    with journal.lock():
        if os.path.exists(plan.out) and not opts.overwrite:
            return _finish(plan, _update(plan, journal, say, on_batch, started))
        # with --overwrite the old cache stays in place until the new one replaces it, complete
        check_disk(plan)
        with phases.phase("journal"):
            _open_journal(plan, journal, say)
        done = journal.done()
        counts = _compute(plan, journal, say=say, on_batch=on_batch)
        with phases.phase("write"):
            result = _assemble(plan, journal, resumed=done > 0, computed=counts.computed,
                               steady=counts.steady, seconds=time.time() - started)
        return _finish(plan, result)


def _finish(plan: ExtractionPlan, result: dict) -> dict:
    """The run's summary with the precision decision and the seconds of each phase."""
    end = since_process_start()
    return {**result, "precision": plan.precision.to_json(),
            "phases": plan.phases.to_json(),
            "process_seconds": round(end, 3) if end is not None else None}


def check_disk(plan: ExtractionPlan) -> None:
    """Refuse, before any work, a cache whose journal and final file would not fit the disk."""
    sizes, free = plan.sizes(), free_bytes(plan.out)
    if sizes.disk_bytes > free:
        per = ", ".join(f"{r['layer']} {r['kb_per_image']} KB" for r in sizes.rows())
        raise UserError(f"{plan.out}: this cache needs {human(sizes.disk_bytes)} of disk while "
                        f"it is written ({human(sizes.total_bytes)} in the end: {per} per image "
                        f"and view, x{1 + sizes.views} views, {sizes.n_images} images) and "
                        f"{human(free)} is free; use --storage float16, fewer --views, a "
                        "pooled --pool or another --out")


def plan_summary(plan: ExtractionPlan) -> dict:
    """What `extract --plan` prints: the sizes of the cache the flags would write; no work."""
    sizes = plan.sizes()
    return {"plan": True, "path": plan.out, "n_images": sizes.n_images, "views": sizes.views,
            "storage": plan.opts.storage, "layers": sizes.rows(),
            "kb_per_image": round(sizes.bytes_per_image / 1024, 1),
            "mb_total": round(sizes.total_bytes / 2**20, 1),
            "disk_needed_mb": round(sizes.disk_bytes / 2**20, 1),
            "disk_free_mb": round(free_bytes(plan.out) / 2**20, 1)}


def say_plan(summary: dict, say) -> None:
    say(f"plan for {summary['path']}: {summary['n_images']} images x {1 + summary['views']} "
        f"view(s), stored as {summary['storage']}")
    for row in summary["layers"]:
        say(f"  {row['layer']:<24} {'x'.join(map(str, row['shape'])):>14}  "
            f"{row['kb_per_image']:>9.1f} KB per image and view  {row['mb_total']:>10.1f} MB")
    say(f"  in all {summary['mb_total']:.1f} MB ({summary['kb_per_image']:.1f} KB per image); "
        f"{summary['disk_needed_mb']:.1f} MB of disk while it is written, "
        f"{summary['disk_free_mb']:.1f} MB free")


def _update(plan: ExtractionPlan, journal: Journal, say, on_batch, started: float) -> dict:
    """The cache at `out` exists: other settings are refused; the same settings bring it up to
    date with its folder (new images computed and added, gone ones dropped) or do nothing.
    The old cache stays in place, complete, until the grown one replaces it."""
    with Cache(plan.out) as existing:
        _refuse_other_settings(plan, existing)
        base = _base(existing)
        growth = plan_growth(existing, plan.folder.paths, plan.folder.labels,
                             plan.folder.class_names, plan.folder.rejected)
        resuming = journal.exists and journal.load_plan().get("base") == base
        if not resuming:
            journal.discard()   # none, or one a finished run was killed before removing
            if not growth.changed:
                _record_split(plan, existing.paths, existing.split, say, planned=False)
                return _nothing_to_do(plan, existing, say)
            _start_update(plan, journal, existing, growth, base, say)
    if resuming:
        _resume_update(plan, journal, growth, say)
    planned = growth_from_json(journal.plan["growth"])
    say(f"updating {plan.out}: {len(planned.added)} image(s) added, {len(planned.removed)} "
        "removed; computing only the new ones")
    done = journal.done()
    counts = _compute(plan, journal, say=say, on_batch=on_batch)
    with plan.phases.phase("write"):
        return _assemble_update(plan, journal, resumed=done > 0, computed=counts.computed,
                                steady=counts.steady, seconds=time.time() - started)


def _refuse_other_settings(plan: ExtractionPlan, existing: Cache) -> None:
    """A cache made with other flags is never grown or replaced without --overwrite."""
    diffs = plan.provenance.mismatches(existing.provenance(), CONTENT_KEYS,
                                       mine="this run asks", theirs="the cache has")
    if diffs:
        raise UserError(f"{plan.out} already holds a different cache ({'; '.join(diffs)}); "
                        "pass another --out, or --overwrite to replace it")
    grouped = [(rule or "").startswith("folder-record grouped")
               for rule in (plan.provenance.split_rule, existing.provenance().split_rule)]
    if grouped[0] != grouped[1]:
        raise UserError(f"{plan.out} was split {'with' if grouped[1] else 'without'} "
                        "--dedupe-split and this run asks otherwise; its rows keep their split "
                        "for life: pass another --out, or --overwrite to re-split it")


def _base(cache: Cache) -> dict:
    """What identifies the cache an update starts from (an update journal resumes only on it)."""
    prov = cache.provenance()
    return {"data_id": prov.data_id, "generation": prov.generation,
            "created": str(cache.attrs.get("created"))}


def _nothing_to_do(plan: ExtractionPlan, existing: Cache, say) -> dict:
    """The folder holds exactly what the cache lists: say so and change nothing."""
    say(f"{plan.out} is already complete for these settings and this folder; nothing to do "
        "(--overwrite re-extracts).")
    return {**existing.summary(), "resumed": False, "already_complete": True, "seconds": 0.0,
            "n_computed": 0, "added": [], "removed": []}


def _start_update(plan: ExtractionPlan, journal: Journal, existing: Cache, growth: Growth,
                  base: dict, say) -> None:
    """Journal an update: the new images only (split by the hash rule, or by their folder in a
    pre-split tree), which old rows stay, and the next generation's provenance."""
    folder, old = plan.folder, existing.provenance()
    split = folder.split[growth.new_pos] if folder.split is not None else _new_split(
        plan, existing, growth, say)
    prov = replace(plan.provenance, generation=old.generation + 1,
                   lineage=old.lineage + ((old.data_id,) if old.data_id else ()))
    shards = plan_shards(len(growth.new_paths), plan.opts.batch_size, len(plan.devices),
                         plan.opts.shard_size)
    journal.start({"provenance": prov.to_json(), "paths": growth.new_paths,
                   "labels": growth.new_labels, "split": np.asarray(split).tolist(),
                   "datasets": plan.datasets, "rejected": growth.new_rejected,
                   "shards": [[s.start, s.stop] for s in shards], "base": base,
                   "growth": asdict(growth)})


def _new_split(plan: ExtractionPlan, existing: Cache, growth: Growth, say) -> np.ndarray:
    """Codes of the images a grown cache adds: the folder's split, with the kept rows' own
    codes known first (a cache older than the record seeds it), recorded before any work."""
    kept = [existing.paths[r] for r in growth.keep]
    _record_split(plan, kept, existing.split[growth.keep], say, planned=False)
    known = {**plan.split_source.known, **dict(zip(kept, existing.split[growth.keep].tolist()))}
    codes = _split_of(plan.folder, plan.split_source, known)[growth.new_pos]
    _record_split(plan, growth.new_paths, codes, say, planned=True)
    return codes


def _resume_update(plan: ExtractionPlan, journal: Journal, growth: Growth, say) -> None:
    """Continue an interrupted update as it was planned; say if the folder changed again since."""
    journal.check_matches(plan.provenance)
    planned = growth_from_json(journal.plan["growth"])
    if (growth.added, growth.removed) != (planned.added, planned.removed):
        say(f"warning: {plan.folder.root} changed again since this update started; it finishes "
            "as planned, then run extract again to bring the cache up to date")
    say(f"resuming the update of {plan.out}: {journal.done()} of "
        f"{len(journal.plan['paths'])} new images already done")


def _assemble_update(plan: ExtractionPlan, journal: Journal, *, resumed: bool, computed: int,
                     steady: float | None, seconds: float) -> dict:
    """Write the grown cache beside the old one (old rows copied, new rows from the journal, in
    folder order), rename it over the old one, drop the journal, and summarise."""
    saved, names = journal.plan, list(journal.plan["datasets"])
    growth = growth_from_json(saved["growth"])
    ok, failed = journal.collect()
    skipped = growth.skipped + [(saved["paths"][i], r) for i, r in failed] + [
        (p, r) for p, r in saved.get("rejected", [])]
    is_new, index = merge_order(growth.keep_pos, [growth.new_pos[i] for i in ok])
    if not len(is_new):
        raise UserError(f"no readable images left in {plan.folder.root}; the cache is unchanged")
    prov = journal.provenance()
    with Cache(plan.out) as old:
        rows = _merged_columns(old, growth, saved, ok, is_new, index)
        write_cache(plan.out, prov, **rows, datasets=saved["datasets"], skipped=skipped,
                    created=datetime.now(timezone.utc).isoformat(),
                    shards=merged_rows(old, names, growth.keep, is_new, index,
                                       (arrays for _, arrays in journal.iter_rows(names))))
    journal.discard()
    return _result(plan, prov, saved["datasets"], split=rows["split"], skipped=skipped,
                   computed=computed, resumed=resumed, steady=steady, seconds=seconds,
                   added=growth.added, removed=growth.removed)


def _merged_columns(old: Cache, growth: Growth, saved: dict, ok, is_new, index) -> dict:
    """paths, labels and split of the grown cache's rows (kept rows keep their split)."""
    paths, labels, split = [], [], []
    for fresh, i in zip(is_new.tolist(), index.tolist()):
        if fresh:
            j = ok[i]
            paths.append(saved["paths"][j])
            labels.append(saved["labels"][j])
            split.append(saved["split"][j])
        else:
            row = growth.keep[i]
            paths.append(old.paths[row])
            labels.append(growth.keep_labels[i])
            split.append(old.split[row])
    return {"paths": paths, "labels": np.asarray(labels, np.int32),
            "split": np.asarray(split, np.uint8)}


def _open_journal(plan: ExtractionPlan, journal: Journal, say) -> None:
    """Continue a matching journal, or start one with the plan's image list, labels and split."""
    if journal.exists and (plan.opts.overwrite or "base" in journal.load_plan()):
        journal.discard()   # an update's journal is no first extraction (its cache is gone)
    if journal.exists:
        journal.check_matches(plan.provenance)
        saved = journal.plan
        known = set(saved["paths"]) | {path for path, _ in saved.get("rejected", [])}
        warn_folder_changed(plan.folder, known, "this extraction started", say)
    else:
        _record_split(plan, plan.folder.paths, plan.split, say, planned=True)
        shards = plan_shards(len(plan.folder.paths), plan.opts.batch_size, len(plan.devices),
                             plan.opts.shard_size)
        journal.start({"provenance": plan.provenance.to_json(), "paths": plan.folder.paths,
                       "labels": plan.folder.labels.tolist(), "split": plan.split.tolist(),
                       "datasets": plan.datasets, "rejected": plan.folder.rejected,
                       "shards": [[s.start, s.stop] for s in shards]})
    done = journal.done()
    empty = plan.folder.empty_classes
    if empty:
        say(f"warning: class folder(s) {', '.join(empty)} hold no images: those classes will have "
            "no examples; add images or remove the folder(s)")
    if done:
        say(f"resuming {plan.out}: {done} of {len(journal.plan['paths'])} images already done")
    elif plan.folder.n_ignored:
        say(f"ignoring {plan.folder.n_ignored} file(s) that are not images")


def folder_changes(folder: ImageFolder, known: set) -> tuple[list[str], list[str]]:
    """(images in the folder but not in `known`, images in `known` but gone from the folder)."""
    listed = set(folder.paths) | {path for path, _ in folder.rejected}
    return sorted(listed - known), sorted(known - listed)


def warn_folder_changed(folder: ImageFolder, known: set, since: str, say) -> None:
    """Say exactly which images the cache leaves out (new ones) or cannot read (gone ones)."""
    added, removed = folder_changes(folder, known)
    for names, what in ((added, "were added to"), (removed, "were removed from")):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5
                                            else "")
            say(f"warning: {len(names)} image(s) {what} {folder.root} since {since}, and are "
                f"not part of this cache: {shown}; run extract again once it is complete to "
                "bring it up to date (only new images are computed)")


def _assemble(plan: ExtractionPlan, journal: Journal, *, resumed: bool, computed: int,
              steady: float | None, seconds: float) -> dict:
    """Write the cache from the journal's batches, drop the journal, and summarise the run."""
    saved = journal.plan
    paths = saved["paths"]
    ok, skipped = journal.collect()
    skipped = [(paths[i], reason) for i, reason in skipped] + [
        (path, reason) for path, reason in saved.get("rejected", [])]
    if not ok:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
        raise UserError(f"none of the {len(paths)} images could be read ({reasons}"
                        + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "") + ")")
    prov = journal.provenance()   # the run's own record (its class list, labels and split)
    write_cache(plan.out, prov, paths=[paths[i] for i in ok],
                labels=np.asarray(saved["labels"])[ok],
                split=np.asarray(saved["split"], dtype=np.uint8)[ok],
                shards=journal.iter_rows(list(saved["datasets"])), datasets=saved["datasets"],
                skipped=skipped, created=datetime.now(timezone.utc).isoformat())
    journal.discard()
    return _result(plan, prov, saved["datasets"],
                   split=np.asarray(saved["split"], dtype=np.uint8)[ok], skipped=skipped,
                   computed=computed, resumed=resumed, steady=steady, seconds=seconds)


def _result(plan: ExtractionPlan, prov: Provenance, datasets: dict, *, split, skipped,
            computed: int, resumed: bool, steady: float | None, seconds: float,
            added=(), removed=()) -> dict:
    """The summary of a run that wrote the cache (a first extraction or an update)."""
    return {
        "path": plan.out, "n_images": len(split), "n_skipped": len(skipped),
        "n_computed": computed, "added": list(added), "removed": list(removed),
        "generation": prov.generation, "resumed": resumed, "already_complete": False,
        "seconds": round(seconds, 2),
        "images_per_second": round(computed / seconds, 2) if seconds else None,
        "steady_images_per_second": round(steady, 2) if steady else None,
        "file_mb": round(os.path.getsize(plan.out) / 2**20, 3), "backbone": prov.backbone,
        "alpha": prov.alpha, "weights": prov.weights, "image_size": prov.image_size,
        "pool": prov.pool, "layers": list(prov.layers), "views": prov.views,
        "features": {k.split("/", 1)[1]: v for k, v in datasets.items()
                     if k.startswith("features/")},
        "split": split_counts(split), "classes": list(prov.class_names),
        "empty_classes": plan.folder.empty_classes,
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
    }


def _compute(plan: ExtractionPlan, journal: Journal, *, say, on_batch=None) -> ShardCounts:
    """Compute every unfinished shard: Ray, one worker process per device, or this process."""
    from tqdm import tqdm

    todo, n = journal.unfinished(), len(journal.plan["paths"])
    if not todo:
        return ShardCounts()
    bar = tqdm(total=n, initial=journal.done(), unit="img", desc="extract",
               disable=not plan.opts.progress, dynamic_ncols=True, smoothing=0.1)
    batches = [0]

    def batch_done(images: int) -> None:
        bar.update(images)
        batches[0] += 1
        if on_batch is not None:
            on_batch(batches[0])

    started = time.perf_counter()
    try:
        if plan.opts.engine == "ray":
            from bottleneck.engines.ray_engine import run_ray

            counts = run_ray(plan.opts, plan.settings(), todo, batch_done, say)
        elif len(plan.devices) > 1:
            say(f"extracting on {len(plan.devices)} devices: "
                + "; ".join(map(str, plan.devices)))
            run = run_workers(plan.devices, plan.settings(), todo, batch_done, say)
            counts = ShardCounts(run.computed, run.steady)
        else:
            counts = run_shards(plan.settings(), journal, compiled_forward(plan.model), todo,
                                batch_done, say)
    finally:
        bar.close()
    _count_compute(plan.phases, counts, time.perf_counter() - started)
    return counts


def compiled_forward(model):
    """bottleneck/backbones/network.py's traced forward function, imported on first use (so
    importing this module imports no TensorFlow); a name of this module, so tests can stand a
    small device in for it."""
    from bottleneck.backbones.network import compiled_forward as traced

    return traced(model)


def _count_compute(phases: Phases, counts: ShardCounts, seconds: float) -> None:
    """The compute's seconds as first batch (tracing, pipeline start) and steady state, where
    the run measured when its first batch ended; otherwise as one 'compute' phase."""
    first = getattr(counts, "first_batch_seconds", None)
    if first is None:
        phases.add("compute", seconds)
        return
    phases.add("first_batch", first)
    phases.add("steady", seconds - first)


def say_summary(result: dict, say) -> None:
    """The human summary of a finished extraction."""
    dims = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in result["features"].items())
    say(f"extracted {result['n_images']} images ({result['n_computed']} computed now"
        f"{', resumed' if result['resumed'] else ''}) in {result['seconds']:.1f} s "
        f"({result['images_per_second'] or 0:.1f} img/s) -> {result['path']} "
        f"({result['file_mb']:.2f} MB)")
    say(f"  {result['backbone']} weights={result['weights']} size={result['image_size']} "
        f"pool={result['pool']}: {dims}"
        + (f" (+{result['views']} augmented views each)" if result.get("views") else ""))
    say(f"  split: {result['split']}; classes: {', '.join(result['classes'])}; generation "
        f"{result['generation']}")
    for key in ("added", "removed"):
        if result.get(key):
            names = result[key]
            say(f"  {key} {len(names)} image(s): {', '.join(names[:20])}"
                + (f" and {len(names) - 20} more" if len(names) > 20 else ""))
    if result["n_skipped"]:
        say(f"  skipped {result['n_skipped']} unreadable image(s):")
        for item in result["skipped"][:20]:
            say(f"    {item['path']}: {item['reason']}")
        if result["n_skipped"] > 20:
            say(f"    ... and {result['n_skipped'] - 20} more (`python cli.py info` lists all)")

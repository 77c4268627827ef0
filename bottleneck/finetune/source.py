"""What fine-tuning starts from: the head (or none), the cache and its split, checked together.

`--from-head best.joblib` holding a kernel SVM (not transplantable) takes the best transplantable
head of its cache on the leaderboard beside it (features/reports/leaderboard.py), and says so.
A head file's provenance must match the cache (one check:
`features.heads.headfile.check_head_matches`); a head refit on train+val is refit on train only,
so the val split that chooses the checkpoint stays unseen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from bottleneck.finetune.options import FinetuneOptions
from features.cache.provenance import Provenance
from features.cache.store import Cache
from features.errors import UserError


@dataclass(frozen=True)
class Head:
    """A fitted head as fine-tuning uses it: exact layer ops and the provenance of what they read.

    Library code and tests may build one from a bare spec and provenance (bundle None)."""

    spec: list[dict]                  # the head as layer ops (features/heads/layer_spec.py)
    provenance: Provenance            # the cache (and taps) it was fit on
    kind: str | None = None           # logistic, svm, sgd, mlp, ...
    predict_proba: Callable | None = None   # the transplant check's reference (default: the spec)
    bundle: dict | None = None        # the head file's contents, for the match check and a refit
    scores: dict = field(default_factory=dict)
    refit: str | None = None          # "train" once refit on the train split only
    path: str | None = None           # the head file it was loaded from


@dataclass
class Source:
    """The cache, the head (None on the random route) and the facts derived from them."""

    cache: Cache
    head: Head | None
    layers: list[str]        # the cache layers the head reads, in its concatenation order
    provenance: Provenance   # the network to build: the cache's, with only those taps
    data_dir: str
    spec: list[dict]         # the head as layer ops (features/heads/layer_spec.py)
    rows: dict = field(default_factory=dict)   # split name -> sorted cache rows
    info: dict = field(default_factory=dict)   # what the saved network records of its origin

    @property
    def class_names(self) -> list[str]:
        return list(self.cache.class_names)


def load_head_spec(path: str, bundle: dict | None = None) -> Head:
    """A saved head file (or its loaded `bundle`) as a Head (refused when it cannot become
    network layers exactly)."""
    from features.heads.headfile import load_head
    from features.heads.layer_spec import head_layer_spec

    bundle = bundle if bundle is not None else load_head(path)
    try:
        spec = head_layer_spec(bundle["pipeline"])
    except UserError as exc:
        if "--head-init random" in str(exc):
            raise
        raise UserError(f"{exc} -- this head cannot become network layers exactly: use "
                        "--head-init random (classic route), or refit a linear head "
                        "(logistic, linear SVM, SGD) or an MLP and pass that") from exc
    return Head(spec=spec, provenance=bundle["provenance"], kind=bundle.get("kind"),
                predict_proba=bundle["pipeline"].predict_proba, bundle=bundle,
                scores=bundle.get("scores") or {}, path=path)


def load_from_head(path: str, say) -> Head:
    """--from-head: the head file; for a leaderboard's best.joblib holding a kernel SVM, the
    best transplantable head of its cache on that leaderboard (said in one line)."""
    from features.heads.headfile import load_head
    from features.heads.kinds import NOT_TRANSPLANTABLE
    from features.reports import leaderboard

    bundle = load_head(path)
    kind = bundle.get("kind")
    if kind not in NOT_TRANSPLANTABLE or not leaderboard.is_best_file(path):
        return load_head_spec(path, bundle)
    prov = bundle["provenance"]
    found = leaderboard.best_transplantable(path, prov.cache_path or "", prov.data_id)
    if found is None:
        raise UserError(f"{path} is a {kind} head (a kernel SVM cannot become network layers) "
                        f"and {leaderboard.board_path(path)} lists no transplantable head of its "
                        "cache: fit one (e.g. `python cli.py fit-logistic`), or use "
                        "--head-init random")
    row, other = found
    say(f"{path} is a {kind} head (a kernel SVM cannot become network layers): fine-tuning the "
        f"best transplantable head on the leaderboard instead, {other} ({row.kind}, cv "
        f"{row.cv_mean:.4f})")
    return load_head_spec(other)


def open_cache(opts: FinetuneOptions, head: Head | None) -> Cache:
    """The cache whose split and images we train on; checked against the head's provenance."""
    from features.heads.headfile import check_head_matches

    prov = head.provenance if head is not None else None
    path = opts.features or (prov.cache_path if prov else None)
    if not path:
        raise UserError("no feature cache: pass --features FILE.h5 (the cache the head was fit on)")
    cache = Cache(path)
    if head is None:
        return cache
    try:   # a bare spec + provenance (library use, tests) is checked like a head file
        check_head_matches(head.bundle or {"provenance": prov}, cache)
    except UserError:
        cache.close()
        raise
    return cache


def head_feature_layers(head: Head | None, cache: Cache) -> list[str]:
    """The cache layers the head reads, in its concatenation order (all layers by default)."""
    prov = head.provenance if head is not None else None
    layers = list(prov.taps if prov is not None else cache.layers)
    missing = [layer for layer in layers if layer not in cache.layers]
    if missing:
        raise UserError(f"the head reads {', '.join(missing)}, which {cache.path} does not hold")
    return layers


def refit_head_on_train(head: Head, cache: Cache, layers, train_rows, say) -> Head:
    """A head refit on train+val has seen the val split that fine-tuning uses to choose its
    checkpoint: refit a copy on the train rows only, same hyper-parameters."""
    from sklearn.base import clone

    from features.heads.layer_spec import head_layer_spec

    started = time.time()
    pipeline = clone(head.bundle["pipeline"])
    pipeline.fit(cache.features(layers, train_rows), cache.labels[train_rows])
    say(f"the head was refit on train+val; refit it on the {len(train_rows)} train images only "
        f"(same hyper-parameters, {time.time() - started:.1f} s) so val stays unseen for "
        "checkpoint choice")
    return replace(head, spec=head_layer_spec(pipeline), predict_proba=pipeline.predict_proba,
                   refit="train")


def open_source(opts: FinetuneOptions, say, head: Head | None = None) -> Source:
    """Resolve the head and the cache, check them, and derive what training needs."""
    from bottleneck.finetune.transplant import random_spec

    if opts.head_init == "head" and head is None:
        if not opts.from_head:
            raise UserError("pass --from-head HEAD.joblib (a fitted head), or "
                            "--head-init random --features FILE.h5")
        head = load_from_head(opts.from_head, say)
    if opts.head_init == "random":
        if not opts.features:
            raise UserError("--head-init random needs --features FILE.h5 for the split and network")
        head = None
    cache = open_cache(opts, head)
    try:
        return _derive(opts, cache, head, random_spec, say)
    except BaseException:
        cache.close()
        raise


def _derive(opts, cache: Cache, head, random_spec, say) -> Source:
    layers = head_feature_layers(head, cache)
    prov = cache.provenance().with_taps(layers)
    data_dir = opts.data or prov.data_dir
    if not os.path.isdir(data_dir):
        raise UserError(f"the images are not at {data_dir!r} any more; pass --data DIR")
    rows = {name: np.flatnonzero(cache.split_mask(name)) for name in ("train", "val", "test")}
    if not len(rows["train"]):
        raise UserError("the cache has no train images; re-extract with a split")
    info = {"route": opts.head_init, "head_kind": head.kind if head is not None else "random",
            "from_head": head.path if head is not None and head.path else opts.from_head,
            "provenance": prov.to_json()}
    head = _train_only_head(head, cache, layers, rows, info, say)
    spec = head.spec if head is not None else random_spec(
        cache.feature_dim(layers), len(cache.class_names), opts.seed)
    return Source(cache, head, layers, prov, data_dir, spec, rows, info)


def _train_only_head(head, cache, layers, rows, info, say):
    """The head as fine-tuning may use it: refit on train when it saw val (in-memory heads)."""
    scores = head.scores if head is not None else {}
    if head is None or scores.get("refit_on") != "train+val":
        return head
    if scores.get("route") == "out-of-core":
        say("note: this out-of-core head was refit on train+val, so the val split is not "
            "unseen; refit it with `--refit-on train` for an honest checkpoint choice")
        return head
    if not (len(rows["val"]) and len(rows["train"])):
        return head
    info["head_refit"] = "train"
    return refit_head_on_train(head, cache, layers, rows["train"], say)

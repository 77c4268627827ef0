"""The `ensemble` stage: heads of several caches of the same images -> one combined model.

Every check runs before any fitting: the heads load, their caches exist and match them, and the
caches hold the same images (relative path), labels and split. The combination weights (or the
stacked head) are chosen on out-of-fold probabilities of the train split: each member's own
pipeline, with its chosen parameters, refitted on the other folds (the same folds for every
member). The val split is not used: `fit` refits heads on train+val, so their val probabilities
are in-sample. The test split is scored once, at the end, for the ensemble and every member.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from features.atomic import check_writable, write_text
from features.cache.split import SPLIT_NAMES
from features.cache.store import Cache
from features.ensembles.combination import (
    Ensemble,
    Member,
    choose_weights,
    file_sha256,
    fit_stacker,
    fold_splits,
    log_loss,
    out_of_fold,
    row_differences,
    save_ensemble,
)
from features.errors import UserError
from features.heads.headfile import check_head_matches, load_head
from features.reports.metrics import classification_text, test_metrics, write_report


@dataclass
class EnsembleOptions:
    heads: list = field(default_factory=list)   # head files, at least two
    out: str = "ensemble.joblib"
    report: str | None = None
    stack: bool = False      # a stacked logistic head instead of a weighted mean
    folds: int = 5           # out-of-fold probabilities of the train split
    seed: int = 0
    top_k: int = 3


@dataclass
class _Source:
    """One member being built: its head bundle, open cache, and rows in the shared order."""

    path: str
    bundle: dict
    cache: Cache
    rows: np.ndarray | None = None

    def features(self, positions) -> np.ndarray:
        """The member's features of the shared rows `positions`, in that order."""
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.cache.feature_dim(self.layers)), np.float32)
        out[order] = self.cache.features(self.layers, rows[order])
        return out

    @property
    def layers(self):
        return list(self.bundle["provenance"].feature_layers)


def _check_options(opts: EnsembleOptions) -> None:
    """Refuse what cannot work before any head is read."""
    if len(opts.heads) < 2:
        raise UserError("an ensemble needs at least two head files (HEAD.joblib HEAD.joblib ...)")
    if len(set(map(os.path.abspath, opts.heads))) < len(opts.heads):
        raise UserError("the same head file is named twice; list each member once")
    if opts.folds < 2:
        raise UserError("--folds must be at least 2")
    check_writable(opts.out)
    if opts.report and os.path.exists(opts.report) and not os.path.isdir(opts.report):
        raise UserError(f"--report {opts.report} is a file; give a folder for the report")


def _open_source(path: str, number: int) -> _Source:
    """Load head `path` and open the cache it was fitted on; UserError if either is wrong."""
    bundle = load_head(path)
    cache_path = bundle["provenance"].cache_path
    if not cache_path or not os.path.isfile(cache_path):
        raise UserError(f"member {number} ({path}): its cache {cache_path} is missing; "
                        "re-extract it (same flags) or refit the head on an existing cache")
    cache = Cache(cache_path)
    try:
        check_head_matches(bundle, cache)
    except UserError as exc:
        cache.close()
        raise UserError(f"member {number} ({path}): {exc}") from None
    return _Source(path, bundle, cache)


def _row_table(cache: Cache, names) -> dict:
    """{relative path: (class name, split name)} of a cache."""
    return {p: (names[int(label)], SPLIT_NAMES[int(code)])
            for p, label, code in zip(cache.paths, cache.labels, cache.split)}


def _align(sources: list[_Source]) -> None:
    """Refuse members whose classes, images, labels or split differ from member 1's; set each
    source's rows to member 1's row order."""
    first = sources[0]
    names = list(first.bundle["provenance"].class_names)
    ref = _row_table(first.cache, names)
    order = list(first.cache.paths)
    for number, src in enumerate(sources[1:], start=2):
        theirs = list(src.bundle["provenance"].class_names)
        if theirs != names:
            raise UserError(f"member {number} ({src.path}) has classes {theirs}, member 1 "
                            f"({first.path}) has {names}; ensemble heads of the same images")
        diffs = row_differences(ref, _row_table(src.cache, names))
        if diffs:
            raise UserError(f"member {number} ({src.path}, cache {src.cache.path}) differs from "
                            f"member 1 ({first.cache.path}): " + "; ".join(diffs)
                            + "; " + _way_out(src.cache.path, first.cache.path))
    for src in sources:
        index = {p: i for i, p in enumerate(src.cache.paths)}
        src.rows = np.array([index[p] for p in order], dtype=np.int64)


def _way_out(theirs: str, first: str) -> str:
    """How to make a member's cache hold member 1's images in member 1's split."""
    return ("extract every cache from the same folder with the same --seed, --test-size and "
            "--val-size (they then share the folder's split record), or, for a cache made "
            f"otherwise, re-extract {theirs} with --split-from {first} --overwrite and refit "
            "its head")


def _member(src: _Source, test: dict | None) -> Member:
    bundle = src.bundle
    return Member(os.path.abspath(src.path), file_sha256(src.path), bundle["kind"],
                  bundle["pipeline"], bundle["provenance"], test)


def _short(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}


def run_ensemble(opts: EnsembleOptions, say=print) -> dict:
    """Check, choose the combination on train out-of-fold probabilities, score test once, save
    the ensemble (and report); returns the JSON summary."""
    _check_options(opts)
    sources = []
    try:
        for number, path in enumerate(opts.heads, start=1):
            sources.append(_open_source(path, number))
        _align(sources)
        return _build(sources, opts, say)
    finally:
        for src in sources:
            src.cache.close()


def _build(sources: list[_Source], opts: EnsembleOptions, say) -> dict:
    """Choose the combination on train, score test once, save; returns the summary."""
    first = sources[0].cache
    labels = first.labels[sources[0].rows]
    split = first.split[sources[0].rows]
    train = np.flatnonzero(split == SPLIT_NAMES.index("train"))
    test = np.flatnonzero(split == SPLIT_NAMES.index("test"))
    splits = fold_splits(labels[train], opts.folds, opts.seed)
    say(f"{len(sources)} members; choosing the {'stacked head' if opts.stack else 'weights'} on "
        f"{len(splits)}-fold out-of-fold probabilities of the train split ({len(train)} images)")
    oof = _out_of_fold(sources, train, labels[train], splits, say)
    combine = _choose(oof, labels[train], opts)
    names = list(sources[0].bundle["provenance"].class_names)
    members, proba, metrics = _score_test(sources, test, labels[test], combine, names, opts)
    scores = {"chosen_on": "train out-of-fold", "folds": len(splits), "seed": opts.seed,
              "oof": _oof_scores(combine.predict_proba(oof), oof, labels[train]),
              "test": metrics, "n": {"train": len(train), "test": len(test)}}
    ensemble = Ensemble(members, combine.weights, combine.combine, combine.stacker, tuple(names),
                        sources[0].bundle["provenance"].data_id, scores)
    save_ensemble(opts.out, ensemble)
    summary = _summary(ensemble, opts)
    if opts.report and metrics is not None:
        summary["report"] = _report(ensemble, opts, sources[0], test, labels[test], proba)
    _say(summary, say)
    return summary


def _out_of_fold(sources, train, y, splits, say) -> list:
    """Each member's out-of-fold probabilities of the train rows (the same folds for all)."""
    oof = []
    for number, src in enumerate(sources, start=1):
        oof.append(out_of_fold(src.bundle["pipeline"], src.features(train), y, splits))
        say(f"  member {number} {src.path}: out-of-fold accuracy "
            f"{np.mean(oof[-1].argmax(1) == y):.4f}")
    return oof


def _oof_scores(proba, oof, y) -> dict:
    """Out-of-fold accuracy and log loss of the combination and of each member."""
    return {"accuracy": float(np.mean(proba.argmax(1) == y)), "log_loss": log_loss(proba, y),
            "members": [{"accuracy": float(np.mean(p.argmax(1) == y)), "log_loss": log_loss(p, y)}
                        for p in oof]}


def _score_test(sources, test, y_test, combine: Ensemble, names, opts: EnsembleOptions):
    """The one look at the test split: (members with their test figures, the ensemble's
    probabilities, its metrics); None for both without a test split."""
    if not len(test):
        return tuple(_member(src, None) for src in sources), None, None
    probas = [src.bundle["pipeline"].predict_proba(src.features(test)) for src in sources]
    members = tuple(_member(src, _short(test_metrics(y_test, p, names, top_k=(1, opts.top_k))))
                    for src, p in zip(sources, probas))
    proba = combine.predict_proba(probas)
    return members, proba, test_metrics(y_test, proba, names, top_k=(1, opts.top_k))


def _choose(oof, y, opts: EnsembleOptions) -> Ensemble:
    """The combination (weights, or stacker with equal nominal weights) from out-of-fold rows."""
    if opts.stack:
        return Ensemble((), tuple([1.0 / len(oof)] * len(oof)), "stack",
                        fit_stacker(oof, y, opts.seed))
    return Ensemble((), tuple(float(w) for w in choose_weights(oof, y)), "mean")


def _member_rows(ensemble: Ensemble) -> list[dict]:
    rows = []
    for m, w, oof in zip(ensemble.members, ensemble.weights, ensemble.scores["oof"]["members"]):
        prov = m.provenance
        rows.append({"path": m.path, "kind": m.kind, "backbone": prov.backbone,
                     "alpha": prov.alpha, "layer": prov.layer, "image_size": prov.image_size,
                     "pool": prov.pool, "weight": w, "oof_accuracy": oof["accuracy"],
                     "oof_log_loss": oof["log_loss"],
                     "test_accuracy": None if m.test is None else m.test["accuracy"],
                     "test": m.test})
    return rows


def _summary(ensemble: Ensemble, opts: EnsembleOptions) -> dict:
    test = ensemble.scores["test"]
    members = _member_rows(ensemble)
    tested = [r["test_accuracy"] for r in members if r["test_accuracy"] is not None]
    return {"path": opts.out, "combine": ensemble.combine, "members": members,
            "weights": list(ensemble.weights),
            "test_accuracy": None if test is None else test["accuracy"],
            "best_member_test_accuracy": max(tested) if tested else None,
            "test": None if test is None else {k: v for k, v in test.items()
                                               if k != "confusion_matrix"},
            "chosen_on": ensemble.scores["chosen_on"], "folds": ensemble.scores["folds"],
            "oof_accuracy": ensemble.scores["oof"]["accuracy"],
            "oof_log_loss": ensemble.scores["oof"]["log_loss"], "n": ensemble.scores["n"]}


def members_table(rows: list[dict], ensemble_row: dict) -> str:
    """A markdown table: every member's weight, out-of-fold and test figures, then the
    ensemble's."""
    lines = ["| model | weight | oof accuracy | test accuracy | balanced | macro F1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows + [ensemble_row]:
        t = r.get("test") or {}
        lines.append(f"| {r['name']} | {_fmt(r.get('weight'))} | {_fmt(r.get('oof_accuracy'))} "
                     f"| {_fmt(t.get('accuracy'))} | {_fmt(t.get('balanced_accuracy'))} "
                     f"| {_fmt(t.get('macro_f1'))} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table_rows(summary: dict, ensemble: Ensemble):
    rows = [{**r, "name": m.label()} for r, m in zip(summary["members"], ensemble.members)]
    return rows, {"name": f"**ensemble ({ensemble.combine})**", "weight": None,
                  "oof_accuracy": summary["oof_accuracy"], "test": summary["test"]}


def _report(ensemble: Ensemble, opts: EnsembleOptions, first: _Source, test, y_test, proba):
    """metrics.json (members beside the ensemble), the text report, confusion matrix,
    mistakes.html and members.md."""
    from features.reports.mistakes import gallery_data

    names = list(ensemble.class_names)
    summary = _summary(ensemble, opts)
    rows, ens_row = _table_rows(summary, ensemble)
    paths = [first.cache.paths[i] for i in first.rows[test]]
    files = write_report(
        opts.report, metrics=ensemble.scores["test"],
        cv={k: ensemble.scores[k] for k in ("chosen_on", "folds", "seed", "oof")},
        text=classification_text(y_test, proba, names), class_names=names,
        head={"kind": "ensemble", "path": opts.out, "combine": ensemble.combine,
              "members": summary["members"], "weights": list(ensemble.weights)},
        title=f"ensemble of {len(ensemble.members)} heads ({ensemble.combine}), test split",
        gallery=gallery_data(y_test, proba, names, paths=paths,
                             data_dir=first.cache.provenance().data_dir))
    files["members"] = os.path.join(opts.report, "members.md")
    write_text(files["members"], members_table(rows, ens_row))
    return files


def _say(summary: dict, say) -> None:
    say(f"{'member':<60} {'weight':>7} {'oof acc':>8} {'test acc':>9}")
    for r in summary["members"]:
        name = f"{os.path.basename(r['path'])} ({r['kind']}, {r['backbone']} {r['layer']} " \
               f"{r['image_size']}px)"
        say(f"{name:<60} {r['weight']:>7.3f} {r['oof_accuracy']:>8.4f} "
            f"{_fmt(r['test_accuracy']):>9}")
    say(f"{'ensemble (' + summary['combine'] + ')':<60} {'':>7} {summary['oof_accuracy']:>8.4f} "
        f"{_fmt(summary['test_accuracy']):>9}")
    say(f"ensemble -> {summary['path']} (weights chosen on {summary['chosen_on']}, "
        f"{summary['folds']} folds; test scored once)")
    if summary.get("report"):
        say(f"report: {', '.join(summary['report'].values())}")

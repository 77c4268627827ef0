"""The `audit` command's stage: cache -> near-duplicates, label errors, outliers, balance ->
audit.json, audit.html, exclude.txt (for fit/extract --exclude) and groups.json (for extract
--dedupe-split) in one folder (bottleneck/cli/audit.py parses the flags)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from features.audit import duplicates as dup
from features.audit import labels as lab
from features.audit import outliers as out
from features.audit.exclude import EXCLUDE_KINDS
from features.errors import UserError

GRAPH_K = 20   # neighbours per image kept for pairs and outliers


@dataclass
class AuditOptions:
    features: str | None = None
    layer: str | None = None
    out: str = "audit"
    threshold: float = dup.THRESHOLD
    folds: int = 5
    seed: int = 0
    n_jobs: int = -1
    exclude_kinds: tuple[str, ...] = ("leaks",)


@dataclass
class Findings:
    """Everything the audit computed, by cache row."""

    pairs: dup.Pairs
    groups: np.ndarray                 # group id per row
    dup_groups: list[dup.DuplicateGroup]
    leaked: list[int]
    issues: lab.LabelIssues
    outlier_score: np.ndarray
    outlier_rows: np.ndarray
    outlier_threshold: float


def check_options(opts: AuditOptions) -> None:
    from features.atomic import check_writable

    unknown = [k for k in opts.exclude_kinds if k not in EXCLUDE_KINDS]
    if unknown:
        raise UserError(f"--exclude-kinds {','.join(unknown)}: choose among "
                        f"{', '.join(EXCLUDE_KINDS)}")
    if opts.folds < 2:
        raise UserError("--cv must be at least 2")
    if not -2 <= opts.threshold <= 2:
        raise UserError(f"--threshold {opts.threshold}: a CSLS score lies in [-2, 2] (default "
                        f"{dup.THRESHOLD})")
    check_writable(os.path.join(opts.out, "audit.json"), "--out")


def find_all(cache, layer: str, layers, opts: AuditOptions, say) -> Findings:
    """Index (kept beside the cache) -> neighbour graph -> the three findings."""
    from features.audit.index import load_or_build

    index = load_or_build(cache, layer, layers, say)
    graph = index.graph(GRAPH_K)
    pairs = dup.scored_pairs(graph, opts.threshold)
    groups = dup.group_ids(len(cache), pairs)
    dup_groups = dup.duplicate_groups(pairs, groups, cache.split, cache.labels)
    say(f"near-duplicates: {len(dup_groups)} groups; finding label errors "
        f"({opts.folds}-fold out-of-fold probabilities) ...")
    X = cache.features(layers)
    issues = lab.find_label_issues(X, cache.labels, groups, folds=opts.folds, seed=opts.seed,
                                   n_jobs=opts.n_jobs)
    scores = out.outlier_scores(X)
    rows, threshold = out.flagged(scores)
    return Findings(pairs, groups, dup_groups, dup.leaked_rows(dup_groups, cache.split), issues,
                    scores, rows, threshold)


def _member(cache, row: int, keep: bool = False) -> dict:
    return {"path": cache.paths[row], "class": cache.class_names[int(cache.labels[row])],
            "split": dup.split_name(cache.split[row]), "row": int(row), "keep": keep}


def _duplicates_json(cache, f: Findings, threshold: float) -> dict:
    groups = [{"score": g.score, "cosine": g.cosine, "cross_split": g.cross_split,
               "mixed_labels": g.mixed_labels,
               "members": [_member(cache, r, r == g.keep) for r in g.rows]}
              for g in sorted(f.dup_groups, key=lambda g: (not g.cross_split, -g.score))]
    return {"threshold": threshold, "n_groups": len(groups), "n_pairs": len(f.pairs.a),
            "n_images": sum(len(g.rows) for g in f.dup_groups),
            "n_cross_split": sum(g.cross_split for g in f.dup_groups),
            "n_mixed_labels": sum(g.mixed_labels for g in f.dup_groups),
            "n_leaked": len(f.leaked), "leaked": [cache.paths[r] for r in f.leaked],
            "groups": groups}


def _labels_json(cache, f: Findings) -> dict:
    names, issues = cache.class_names, f.issues
    suggested = np.argmax(issues.proba, axis=1)

    def row(i):
        given = int(cache.labels[i])
        return {**_member(cache, i), "given": names[given], "suggested": names[suggested[i]],
                "given_probability": float(issues.proba[i, given]),
                "suggested_probability": float(issues.proba[i, suggested[i]]),
                "quality": float(issues.quality[i]), "flagged": bool(issues.flagged[i])}

    flagged = [int(i) for i in issues.ranked if issues.flagged[i]]
    return {"method": "cleanlab find_label_issues (prune_by_noise_rate) on out-of-fold "
                      "probabilities of a logistic head; ranked by self-confidence (the "
                      "probability of the given label)",
            "n_flagged": len(flagged), "cv_accuracy": issues.cv_accuracy, "folds": issues.folds,
            "ranked": [row(i) for i in flagged]}


def _outliers_json(cache, f: Findings) -> dict:
    rows = [{**_member(cache, int(i)), "score": float(f.outlier_score[i])}
            for i in f.outlier_rows]
    return {"k": out.OUTLIER_K, "threshold": f.outlier_threshold, "n_flagged": len(rows),
            "median": float(np.median(f.outlier_score)), "ranked": rows}


def exclude_entries(cache, f: Findings, kinds) -> list[tuple[str, str]]:
    """[(path, why)] for the exclude list, each image once, in the order of `kinds`."""
    seen, out_rows = set(), []

    def add(row, why):
        if row not in seen:
            seen.add(row)
            out_rows.append((cache.paths[row], why))

    for kind in kinds:
        if kind == "leaks":
            for r in f.leaked:
                add(r, f"near-duplicate of {_kept(cache, f, r)} in another split")
        elif kind == "duplicates":
            for g in f.dup_groups:
                for r in g.rows:
                    if r != g.keep:
                        add(r, f"near-duplicate of {cache.paths[g.keep]}")
        elif kind == "labels":
            for i in (i for i in f.issues.ranked if f.issues.flagged[i]):
                best = int(np.argmax(f.issues.proba[i]))
                add(int(i), f"labelled {cache.class_names[int(cache.labels[i])]}, looks like "
                            f"{cache.class_names[best]}")
        elif kind == "outliers":
            for i in f.outlier_rows:
                add(int(i), f"outlier (local outlier factor {f.outlier_score[i]:.3f})")
    return out_rows


def _kept(cache, f: Findings, row: int) -> str:
    group = next(g for g in f.dup_groups if row in g.rows)
    return cache.paths[group.keep]


def run_audit(opts: AuditOptions, say=print) -> dict:
    """Audit the cache; write audit.json, audit.html and exclude.txt under opts.out."""
    from features.atomic import write_json, write_text
    from features.audit.exclude import format_exclude
    from features.audit.groups import groups_json
    from features.audit.outliers import class_balance
    from features.audit.report import render_audit
    from features.cache.store import Cache, newest_cache

    check_options(opts)
    started = time.time()
    with Cache(opts.features or newest_cache()) as cache:
        layer, layers = cache.select_layers(opts.layer)
        if len(cache) < 3:
            raise UserError(f"{cache.path} holds {len(cache)} image(s); an audit needs a few")
        found = find_all(cache, layer, layers, opts, say)
        entries = exclude_entries(cache, found, opts.exclude_kinds)
        result = {"features": cache.path, "layer": layer, "n_images": len(cache),
                  "data_dir": cache.provenance().data_dir,
                  "duplicates": _duplicates_json(cache, found, opts.threshold),
                  "label_issues": _labels_json(cache, found),
                  "outliers": _outliers_json(cache, found),
                  "balance": class_balance(cache.labels, cache.split, cache.class_names)}
    os.makedirs(opts.out, exist_ok=True)
    paths = {name: os.path.join(opts.out, name) for name in ("audit.json", "audit.html",
                                                             "exclude.txt", "groups.json")}
    result["exclude"] = {"path": paths["exclude.txt"], "kinds": list(opts.exclude_kinds),
                         "n": len(entries)}
    result["seconds"] = round(time.time() - started, 2)
    write_json(paths["audit.json"], result, indent=1)
    write_text(paths["audit.html"], render_audit(result))
    write_text(paths["exclude.txt"], format_exclude(entries))
    write_json(paths["groups.json"], groups_json(
        [[m["path"] for m in g["members"]] for g in result["duplicates"]["groups"]],
        data_dir=result["data_dir"], threshold=opts.threshold), indent=0)
    result["files"] = paths
    return result


def say_audit(result: dict, say) -> None:
    """The human summary of an audit."""
    d, labels, o = result["duplicates"], result["label_issues"], result["outliers"]
    say(f"audit of {result['features']} ({result['n_images']} images, layer {result['layer']}, "
        f"{result['seconds']:.1f} s):")
    say(f"  near-duplicates: {d['n_groups']} groups ({d['n_images']} images) at score >= "
        f"{d['threshold']}; {d['n_cross_split']} across splits ({d['n_leaked']} val/test images "
        f"with a copy in another split), {d['n_mixed_labels']} under two classes")
    say(f"  likely label errors: {labels['n_flagged']} (out-of-fold CV accuracy "
        f"{labels['cv_accuracy']:.3f})"
        + "".join(f"\n    {r['path']}: labelled {r['given']}, looks like {r['suggested']} "
                  f"({r['suggested_probability']:.2f})" for r in labels["ranked"][:5]))
    say(f"  outliers: {o['n_flagged']} (local outlier factor above {o['threshold']:.3f})"
        + "".join(f"\n    {r['path']}: {r['score']:.3f}" for r in o["ranked"][:3]))
    b = result["balance"]
    say(f"  classes: {', '.join(f'{c} {n}' for c, n in b['counts'].items())} (largest/smallest "
        f"{b['imbalance']:.2f})")
    e = result["exclude"]
    say(f"report: {result['files']['audit.html']}; {e['n']} images ({', '.join(e['kinds'])}) "
        f"listed in {e['path']}: `python cli.py fit --exclude {e['path']}` leaves them out; "
        f"`extract --dedupe-split {result['files']['groups.json']}` splits every group as one")

"""Head files: a fitted scikit-learn pipeline plus the provenance of the features it was fitted on.

A head file is a joblib pickle of one dict::

    {"format": "bottleneck-head", "format_version": 1, "kind": "svm" | "logistic" | "sgd" | "mlp"
     | "svm-rbf" | "svm-poly", "pipeline": <fitted sklearn Pipeline>, "provenance": {...cache
     provenance..., "layer": NAME | "all", "feature_layers": [NAME, ...]}, "scores": {...},
     "created": ISO time}

In memory (`make_bundle`, `load_head`) the provenance is a
`features.cache.provenance.Provenance`; the file holds its `to_json()` dict, so the format stays
plain data.

SAFETY: joblib (pickle) runs code while it loads a file. Only load head files you made yourself or
otherwise trust. `load_head` refuses anything that is not our dict, but it can only check that
after unpickling, so the check protects against mistakes, not against a malicious file.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from features.atomic import atomic_path
from features.cache.provenance import COMPATIBLE_KEYS, Provenance
from features.ensembles.combination import ENSEMBLE_FORMAT
from features.errors import UserError, check_format_version
from features.pickled import load_pickled

HEAD_FORMAT = "bottleneck-head"
HEAD_FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "kind", "pipeline", "provenance", "scores", "created")


def make_bundle(kind: str, pipeline, provenance: Provenance, layer: str, feature_layers,
                scores: dict, head_options: dict | None = None) -> dict:
    """A head bundle: the pipeline and the provenance of the features it reads (`feature_layers`
    of the cache `provenance` describes, named `layer` on the command line)."""
    return {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION, "kind": kind,
            "pipeline": pipeline,
            "provenance": provenance.for_head(layer, feature_layers, head_options),
            "scores": scores, "created": datetime.now(timezone.utc).isoformat()}


def save_head(path: str, bundle: dict) -> str:
    """Write `bundle` (see module doc; provenance as a plain dict) atomically; returns the path."""
    import joblib

    _check_bundle(bundle, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        joblib.dump({**bundle, "provenance": bundle["provenance"].to_json()}, tmp, compress=3)
    return path


def load_head(path: str) -> dict:
    """Load a head file written by `save_head`; refuses anything else (UserError).

    joblib/pickle executes code on load: only load files you trust.
    """
    if not os.path.isfile(path):
        raise UserError(f"no head file at {path}; fit one with `python cli.py fit` "
                        "(or fit-svm / fit-logistic / fit-mlp)")
    try:
        bundle = load_pickled(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file to the user
        raise UserError(f"{path} is not a readable head file ({type(exc).__name__}: {exc})") from exc
    if isinstance(bundle, dict) and bundle.get("format") == ENSEMBLE_FORMAT:
        raise UserError(f"{path} is an ensemble of heads, not one head: `predict --model` takes "
                        "it; finetune needs one of its member heads")
    if not isinstance(bundle, dict) or bundle.get("format") != HEAD_FORMAT:
        raise UserError(f"{path} is not a bottleneck head file (no '{HEAD_FORMAT}' metadata); "
                        "refit it with `python cli.py fit`")
    check_format_version(bundle.get("format_version", 0), HEAD_FORMAT_VERSION, path, "head ")
    try:
        bundle["provenance"] = Provenance.from_json(bundle.get("provenance") or {})
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: head provenance is unreadable ({exc}); refit it") from exc
    _check_bundle(bundle, path)
    return bundle


def _check_bundle(bundle, path):
    if not isinstance(bundle, dict) or bundle.get("format") != HEAD_FORMAT:
        raise UserError(f"{path}: not a bottleneck head bundle")
    missing = [k for k in REQUIRED_KEYS if k not in bundle]
    if missing:
        raise UserError(f"{path}: head file lacks {', '.join(missing)}; refit it")
    prov = bundle["provenance"]
    if not isinstance(prov, Provenance) or prov.feature_layers is None or prov.layer is None:
        raise UserError(f"{path}: head provenance lacks layer/feature_layers; refit it")


def head_mismatches(bundle: dict, features) -> list[str]:
    """['key: head has X, features have Y', ...] for each compatibility key that differs between
    a head and a cache or a network's Provenance (its feature layers must all be computed)."""
    other = features.provenance() if hasattr(features, "provenance") else features
    return bundle["provenance"].mismatches(other, COMPATIBLE_KEYS)


def check_head_matches(bundle: dict, features) -> None:
    """Raise UserError naming every differing provenance key between a head and a cache/model."""
    diffs = head_mismatches(bundle, features)
    if diffs:
        keys = ", ".join(d.split(":")[0] for d in diffs)
        raise UserError(f"head does not match these features ({keys} differ): " + "; ".join(diffs)
                        + ". Use the cache/backbone the head was fitted on, or refit the head")



def check_head_current(bundle: dict) -> None:
    """Refuse a head whose own cache has since grown new classes (it can never predict them),
    naming them; a cache grown by images only, or gone, or replaced by another, is no reason."""
    from features.cache.store import read_provenance

    prov = bundle["provenance"]
    now = read_provenance(prov.cache_path) if prov.cache_path else None
    if now is None or not prov.data_id or prov.data_id not in now.lineage:
        return
    new = [name for name in now.class_names if name not in prov.class_names]
    if new:
        raise UserError(f"the cache this head was fitted on ({prov.cache_path}) has grown new "
                        f"classes since ({', '.join(new)}) that the head cannot predict; refit "
                        f"it: python cli.py fit --features {prov.cache_path}")

"""Head files: a fitted scikit-learn pipeline plus the provenance of the features it was fitted on.

A head file is a joblib pickle of one dict::

    {"format": "bottleneck-head", "format_version": 1, "kind": "svm" | "logistic" | "sgd" | "mlp"
     | "svm-rbf" | "svm-poly", "pipeline": <fitted sklearn Pipeline>, "provenance": {...cache
     provenance..., "layer": NAME | "all", "feature_layers": [NAME, ...]}, "scores": {...},
     "created": ISO time}

SAFETY: joblib (pickle) runs code while it loads a file. Only load head files you made yourself or
otherwise trust. `load_head` refuses anything that is not our dict, but it can only check that
after unpickling, so the check protects against mistakes, not against a malicious file.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from features.errors import UserError

HEAD_FORMAT = "bottleneck-head"
HEAD_FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "kind", "pipeline", "provenance", "scores", "created")
# What must agree between a head and the features (cache or network) it is applied to.
MATCH_KEYS = ("backbone", "alpha", "weights", "image_size", "pool", "layers", "preprocess",
              "class_names")


def make_bundle(kind: str, pipeline, provenance: dict, layer: str, feature_layers, scores: dict) -> dict:
    prov = dict(provenance)
    prov["layer"] = layer
    prov["feature_layers"] = list(feature_layers)
    return {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION, "kind": kind,
            "pipeline": pipeline, "provenance": prov, "scores": scores,
            "created": datetime.now(timezone.utc).isoformat()}


def save_head(path: str, bundle: dict) -> str:
    """Write `bundle` (see module doc) atomically to `path`; returns the path."""
    import joblib

    _check_bundle(bundle, path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    joblib.dump(bundle, tmp, compress=3)
    os.replace(tmp, path)
    return path


def load_head(path: str) -> dict:
    """Load a head file written by `save_head`; refuses anything else (UserError).

    joblib/pickle executes code on load: only load files you trust.
    """
    import joblib

    if not os.path.isfile(path):
        raise UserError(f"no head file at {path}; fit one with `python cli.py fit` "
                        "(or fit-svm / fit-logistic / fit-mlp)")
    try:
        bundle = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file to the user
        raise UserError(f"{path} is not a readable head file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(bundle, dict) or bundle.get("format") != HEAD_FORMAT:
        raise UserError(f"{path} is not a bottleneck head file (no '{HEAD_FORMAT}' metadata); "
                        "refit it with `python cli.py fit`")
    _check_bundle(bundle, path)
    if int(bundle["format_version"]) > HEAD_FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer bottleneck (head format "
                        f"{bundle['format_version']}); upgrade to read it")
    return bundle


def _check_bundle(bundle, path):
    if not isinstance(bundle, dict) or bundle.get("format") != HEAD_FORMAT:
        raise UserError(f"{path}: not a bottleneck head bundle")
    missing = [k for k in REQUIRED_KEYS if k not in bundle]
    if missing:
        raise UserError(f"{path}: head file lacks {', '.join(missing)}; refit it")
    prov = bundle["provenance"]
    if not isinstance(prov, dict) or "feature_layers" not in prov or "layer" not in prov:
        raise UserError(f"{path}: head provenance lacks layer/feature_layers; refit it")


def _norm(key, value):
    if key == "alpha" and value in (None, "none"):
        return None
    if key == "alpha" and value is not None:
        return float(value)
    if key == "image_size" and value is not None:
        return int(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def head_mismatches(bundle: dict, cache_or_prov) -> list[str]:
    """['key: head has X, features have Y', ...] for each provenance key that differs."""
    head = bundle["provenance"]
    other = cache_or_prov.provenance() if hasattr(cache_or_prov, "provenance") else cache_or_prov
    out = []
    for key in MATCH_KEYS:
        mine, theirs = _norm(key, head.get(key)), _norm(key, other.get(key))
        if key == "layers":
            # a head needs its feature layers, in the same order, not the cache's full tap list
            needed = list(head.get("feature_layers") or mine or [])
            have = list(theirs or [])
            if not all(layer in have for layer in needed):
                out.append(f"layers: head needs {needed}, features have {have}")
            continue
        if mine != theirs:
            out.append(f"{key}: head has {mine!r}, features have {theirs!r}")
    return out


def check_head_matches(bundle: dict, cache_or_prov) -> None:
    """Raise UserError naming every differing provenance key between a head and a cache/model."""
    diffs = head_mismatches(bundle, cache_or_prov)
    if diffs:
        keys = ", ".join(d.split(":")[0] for d in diffs)
        raise UserError(f"head does not match these features ({keys} differ): " + "; ".join(diffs)
                        + ". Use the cache/backbone the head was fitted on, or refit the head")

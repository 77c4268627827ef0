"""Ensembles of heads: the typed file content and the pure combination logic.

An ensemble combines heads fitted on different caches (backbones, layers, image sizes) of the
same images. Its probabilities are the weighted mean of its members' (`combine="mean"`), or a
stacked multinomial logistic regression on the members' log-probabilities (`combine="stack"`).
The weights (or the stacker) are chosen on out-of-fold probabilities of the train split, never
on test (features/ensembles/run.py runs that; this module only computes).

An ensemble file is a joblib pickle of one dict (`Ensemble.to_file` / `from_file`)::

    {"format": "bottleneck-ensemble", "format_version": 1,
     "members": [{"path", "sha256", "kind", "pipeline", "provenance": {...head provenance...},
                  "test": {...member test figures...} | None}, ...],
     "weights": [w, ...], "combine": "mean" | "stack", "stacker": <LogisticRegression> | None,
     "class_names": [...], "data_id": "sha256:...", "scores": {...}, "created": ISO time}

SAFETY: like head files, joblib runs code while loading: only load ensembles you trust.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from features.atomic import atomic_path
from features.cache.provenance import Provenance
from features.errors import UserError, check_format_version
from features.pickled import load_pickled

ENSEMBLE_FORMAT = "bottleneck-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
COMBINES = ("mean", "stack")
_EPS = 1e-7          # probabilities are clipped here before a logarithm
# what members of one ensemble must share (the images and split are compared row by row)
SHARED_KEYS = ("class_names",)
# what decides whether two members can share one forward pass in predict
NETWORK_KEYS = ("backbone", "alpha", "weights", "image_size", "pool", "preprocess", "precision")


@dataclass(frozen=True)
class Member:
    """One head of an ensemble: its pipeline and the provenance of the features it reads."""

    path: str                      # the head file it was read from
    sha256: str                    # of that file when the ensemble was made
    kind: str
    pipeline: object
    provenance: Provenance
    test: dict | None = None       # its own test figures, scored beside the ensemble's

    def network_key(self) -> tuple:
        """Members with equal keys can share one forward pass (a union of their taps)."""
        return tuple(getattr(self.provenance, key) for key in NETWORK_KEYS)

    def label(self) -> str:
        """A short human name: file, kind, backbone, layer and size."""
        prov = self.provenance
        return (f"{os.path.basename(self.path)} ({self.kind}, {prov.backbone}"
                f"{'' if prov.alpha is None else f'-a{prov.alpha:g}'} {prov.layer} "
                f"{prov.image_size}px)")


@dataclass(frozen=True)
class Ensemble:
    """Members, their combination and the scores of the run that chose it."""

    members: tuple[Member, ...]
    weights: tuple[float, ...]
    combine: str = "mean"
    stacker: object | None = None
    class_names: tuple[str, ...] = ()
    data_id: str = ""
    scores: dict = field(default_factory=dict)
    created: str = ""

    def predict_proba(self, member_probas) -> np.ndarray:
        """The ensemble's probabilities from each member's (n, k) probabilities, in order."""
        if self.combine == "stack":
            return self.stacker.predict_proba(stack_inputs(member_probas))
        return weighted_mean(member_probas, self.weights)

    def to_file(self) -> dict:
        """The plain dict saved in the file (provenance as JSON)."""
        return {"format": ENSEMBLE_FORMAT, "format_version": ENSEMBLE_FORMAT_VERSION,
                "members": [{"path": m.path, "sha256": m.sha256, "kind": m.kind,
                             "pipeline": m.pipeline, "provenance": m.provenance.to_json(),
                             "test": m.test} for m in self.members],
                "weights": [float(w) for w in self.weights], "combine": self.combine,
                "stacker": self.stacker, "class_names": list(self.class_names),
                "data_id": self.data_id, "scores": self.scores,
                "created": self.created or datetime.now(timezone.utc).isoformat()}

    @classmethod
    def from_file(cls, data: dict, path: str = "ensemble") -> Ensemble:
        """Read `to_file`'s dict; a UserError names what is wrong with it."""
        if not isinstance(data, dict) or data.get("format") != ENSEMBLE_FORMAT:
            raise UserError(f"{path} is not a bottleneck ensemble file; make one with "
                            "`python cli.py ensemble HEAD.joblib HEAD.joblib ...`")
        check_format_version(data.get("format_version", 0), ENSEMBLE_FORMAT_VERSION, path,
                             "ensemble ")
        try:
            members = tuple(Member(m["path"], m["sha256"], m["kind"], m["pipeline"],
                                   Provenance.from_json(m["provenance"]), m.get("test"))
                            for m in data["members"])
            return cls(members, tuple(float(w) for w in data["weights"]), data["combine"],
                       data.get("stacker"), tuple(data["class_names"]), data.get("data_id", ""),
                       data.get("scores") or {}, data.get("created", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: ensemble file is unreadable ({type(exc).__name__}: "
                            f"{exc}); make it again") from exc


def weighted_mean(probas, weights) -> np.ndarray:
    """sum_m w_m P_m / sum_m w_m for a list of (n, k) probability arrays."""
    weights = np.asarray(weights, dtype=np.float64)
    total = sum(w * np.asarray(p, dtype=np.float64) for w, p in zip(weights, probas))
    return total / weights.sum()


def stack_inputs(probas) -> np.ndarray:
    """The stacker's input: every member's clipped log-probabilities side by side."""
    return np.concatenate([np.log(np.clip(np.asarray(p, np.float64), _EPS, 1.0))
                           for p in probas], axis=1)


def choose_weights(probas, y, iterations: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """Simplex weights minimising the log loss of the weighted mean of `probas` on labels `y`.

    The loss is convex in the weights; this is the EM update of mixture weights (each step
    w_m <- w_m * mean_i(p_mi / sum_k w_k p_ki) with p_mi the probability member m gives row i's
    true class), which never increases it. Deterministic; starts from equal weights."""
    y = np.asarray(y)
    q = np.stack([np.clip(np.asarray(p, np.float64)[np.arange(len(y)), y], _EPS, 1.0)
                  for p in probas])                      # (members, rows)
    w = np.full(len(q), 1.0 / len(q))
    for _ in range(iterations):
        new = w * np.mean(q / (w @ q), axis=1)
        new /= new.sum()
        if np.abs(new - w).max() < tol:
            return new
        w = new
    return w


def log_loss(proba, y) -> float:
    """Mean negative log-probability of the true class (clipped)."""
    proba = np.asarray(proba, np.float64)
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), np.asarray(y)], _EPS, 1.0))))


def fit_stacker(probas, y, seed: int = 0):
    """A multinomial logistic regression (C=1) on the members' log-probabilities."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    return model.fit(stack_inputs(probas), np.asarray(y))


def out_of_fold(pipeline, X, y, splits) -> np.ndarray:
    """(n, k) probabilities of each row from a clone of `pipeline` (its chosen parameters)
    fitted on the other folds of `splits` (a list of (fit rows, held rows))."""
    from sklearn.base import clone

    y = np.asarray(y)
    out = None
    for fit, held in splits:
        model = clone(pipeline).fit(X[fit], y[fit])
        part = model.predict_proba(X[held])
        if out is None:
            out = np.zeros((len(y), part.shape[1]))
        out[held] = part
    return out


def fold_splits(y, folds: int, seed: int) -> list:
    """Stratified, shuffled, seeded k-fold splits of the rows, shared by every member."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(np.asarray(y)) if len(y) else np.zeros(1, int)
    smallest = int(counts[counts > 0].min()) if counts.any() else 0
    folds = min(int(folds), smallest)
    if folds < 2:
        raise UserError(f"the train split has only {smallest} image(s) in some class; choosing "
                        "ensemble weights needs at least 2 per class: add images")
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def row_differences(ref: dict, other: dict, limit: int = 2) -> list[str]:
    """What differs between two {relative path: (label name, split name)} tables, in words
    (empty when they hold the same images with the same labels and split)."""
    out = []
    only_ref = sorted(set(ref) - set(other))
    only_other = sorted(set(other) - set(ref))
    if only_ref:
        out.append(f"{len(only_ref)} image(s) missing (e.g. {', '.join(only_ref[:limit])})")
    if only_other:
        out.append(f"{len(only_other)} extra image(s) (e.g. {', '.join(only_other[:limit])})")
    both = sorted(set(ref) & set(other))
    for what, index in (("label", 0), ("split", 1)):
        bad = [p for p in both if ref[p][index] != other[p][index]]
        if bad:
            example = bad[0]
            out.append(f"{len(bad)} image(s) in another {what} (e.g. {example}: "
                       f"{other[example][index]} instead of {ref[example][index]})")
    return out


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, as 'sha256:<hex>'."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def save_ensemble(path: str, ensemble: Ensemble) -> str:
    """Write the ensemble atomically (see module doc); returns the path."""
    import joblib

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        joblib.dump(ensemble.to_file(), tmp, compress=3)
    return path


def read_model_file(path: str):
    """The raw dict of a .joblib model file (head or ensemble); UserError when unreadable."""
    if not os.path.isfile(path):
        raise UserError(f"no model file at {path}")
    try:
        return load_pickled(path)
    except Exception as exc:  # any unpickling failure is a bad file to the user
        raise UserError(f"{path} is not a readable model file ({type(exc).__name__}: "
                        f"{exc})") from exc


def is_ensemble_file(path: str) -> bool:
    """Whether a .joblib file holds an ensemble (False for heads and unreadable files)."""
    try:
        data = read_model_file(path)
    except UserError:
        return False
    return isinstance(data, dict) and data.get("format") == ENSEMBLE_FORMAT


def load_ensemble(path: str) -> Ensemble:
    """Load an ensemble file written by `save_ensemble` (joblib: only files you trust)."""
    return Ensemble.from_file(read_model_file(path), path)

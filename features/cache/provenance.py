"""Provenance: where features came from. One typed record for a cache, a head and a network.

A cache records it in its HDF5 attributes, a head carries it in its file, a fine-tuned network
in its `probabilities` layer. Every stage that must check compatibility calls `mismatches` with
one of the key groups below, so the facts are written once (like timm's `PretrainedCfg`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

# What determines a cache's contents: two extractions with equal values write equal files.
CONTENT_KEYS = ("data_dir", "backbone", "alpha", "weights", "image_size", "pool", "layers",
                "layer_indices", "preprocess", "precision", "seed", "test_size", "val_size",
                "views", "storage")
# What a head (or network) and the features it is applied to must share. "taps" means: the other
# side computes every layer this side reads (its feature_layers, else its layers).
COMPATIBLE_KEYS = ("backbone", "alpha", "weights", "image_size", "pool", "taps", "preprocess",
                   "class_names", "data_id")
# what a differing key means, where its values alone do not say it
_MEANING = {"data_id": "the head was fitted on other images or another split of them (its test "
                       "figures here would be computed on images it trained on): refit it on "
                       "this cache"}


@dataclass(frozen=True)
class Provenance:
    """The backbone, weights, taps, preprocessing and data split behind a set of features."""

    backbone: str
    alpha: float | None
    weights: str                          # 'imagenet', 'none' or 'sha256:<hex>' of a local file
    image_size: int
    pool: str
    layers: tuple[str, ...]               # the tapped layers, in cache order
    layer_indices: tuple[int, ...]        # their indices in the backbone's body
    preprocess: str                       # keras.applications module of preprocess_input
    precision: str = "float32"             # compute precision of the forward pass
    storage: str = "float32"               # how the arrays are stored: float32, or float16
    #                                        (about 3 significant digits; half the bytes)
    class_names: tuple[str, ...] = ()
    data_dir: str = ""
    seed: int = 0
    test_size: float = 0.2
    val_size: float = 0.1
    views: int = 0                        # augmented views per image stored beside the plain one
    data_id: str = ""                     # identity of the image set and its split (data_identity)
    generation: int = 0                   # 0 for a first extraction, +1 each time extract grows it
    lineage: tuple[str, ...] = ()         # the data_ids of the earlier generations, oldest first
    split_rule: str = ""                  # what split the images: 'folder-record' (the folder's
    #                                       split record), 'split-from <data_id>', 'folders' (a
    #                                       pre-split tree); '' in caches made before it was recorded
    weights_path: str | None = None       # where a local weights file was read (its id: weights)
    cache_path: str | None = None         # the cache a head was fitted on
    versions: dict = field(default_factory=dict, compare=False)
    # a head's: the --layer value, the cache layers it concatenates in order, its options
    layer: str | None = None
    feature_layers: tuple[str, ...] | None = None
    head_options: dict | None = field(default=None, compare=False)

    @property
    def taps(self) -> tuple[str, ...]:
        """The layers this side reads: a head's feature_layers, else every tapped layer."""
        return self.feature_layers if self.feature_layers is not None else self.layers

    def mismatches(self, other: "Provenance", keys=COMPATIBLE_KEYS, *,
                   mine: str = "head has", theirs: str = "features have") -> list[str]:
        """['key: <mine> X, <theirs> Y', ...] for each key in `keys` that differs."""
        out = []
        for key in keys:
            if key == "taps":
                if not set(self.taps) <= set(other.layers):
                    out.append(f"layers: {mine} {list(self.taps)}, {theirs} "
                               f"{list(other.layers)}")
            elif key == "data_id" and self.data_id in other.lineage:
                continue   # fitted on an earlier generation: its test rows are still test here
            elif key == "class_names" and self.class_names != other.class_names:
                out.append(_class_change(self.class_names, other.class_names, mine, theirs))
            elif getattr(self, key) != getattr(other, key):
                out.append(f"{key}: {mine} {_show(getattr(self, key))}, {theirs} "
                           f"{_show(getattr(other, key))}"
                           + (f" ({_MEANING[key]})" if key in _MEANING else ""))
        return out

    def with_taps(self, layers) -> "Provenance":
        """This provenance computing only `layers` (in that order): what a network for a head
        that reads those layers must build."""
        index = dict(zip(self.layers, self.layer_indices))
        return replace(self, layers=tuple(layers), layer_indices=tuple(index[x] for x in layers))

    def for_head(self, layer: str, feature_layers, head_options: dict | None = None):
        """A head's provenance: these features, read as `feature_layers` (the --layer value)."""
        return replace(self, layer=layer, feature_layers=tuple(feature_layers),
                       head_options=head_options)

    def to_json(self) -> dict:
        """A JSON-able dict (lists for tuples); head-only fields are left out when unset."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return {k: v for k, v in out.items()
                if not (k in ("layer", "feature_layers", "head_options") and v is None)}

    @classmethod
    def from_json(cls, data: dict) -> "Provenance":
        """Read what `to_json` wrote (and what older caches and heads wrote: 'none' for a missing
        alpha, lists, numpy scalars); unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: _plain(v) for k, v in data.items() if k in known}
        missing = [name for name in ("backbone", "weights", "image_size", "pool", "layers",
                                     "layer_indices", "preprocess") if name not in values]
        if missing:
            raise ValueError(f"provenance lacks {', '.join(missing)}")
        values["alpha"] = None if values.get("alpha") in (None, "none") else float(values["alpha"])
        values["image_size"] = int(values["image_size"])
        values["layer_indices"] = tuple(int(i) for i in values["layer_indices"])
        values["generation"] = int(values.get("generation") or 0)
        for key in ("layers", "class_names", "feature_layers", "lineage"):
            if values.get(key) is not None:
                values[key] = tuple(str(x) for x in values[key])
        values["weights_path"] = values.get("weights_path") or None
        return cls(**values)


def _plain(value):
    """numpy scalars as Python values, so comparisons and JSON behave."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict)) else value


def _class_change(mine_names, their_names, mine: str, theirs: str) -> str:
    """The class_names mismatch, naming the classes one side has and the other lacks."""
    new = [c for c in their_names if c not in mine_names]
    gone = [c for c in mine_names if c not in their_names]
    detail = "; ".join(part for part in (
        f"new classes: {', '.join(new)}" if new else "",
        f"classes gone: {', '.join(gone)}" if gone else "") if part) or "same classes, other order"
    return (f"class_names: {mine} {_show(mine_names)}, {theirs} {_show(their_names)} ({detail}: "
            "refit the head on these features)")


def _show(value):
    return repr(list(value) if isinstance(value, tuple) else value)


def data_identity(paths, labels, split) -> str:
    """sha256 over the sorted (relative path, label, split code) rows: two caches share it only
    when they hold the same images with the same labels in the same split. Caches written before
    it was recorded have none ('')."""
    import hashlib

    digest = hashlib.sha256()
    for path, label, code in sorted(zip(paths, (int(x) for x in labels),
                                        (int(x) for x in split))):
        digest.update(f"{path}\t{label}\t{code}\n".encode("utf-8", "surrogateescape"))
    return "sha256:" + digest.hexdigest()

"""The HDF5 feature cache: the contract between extraction (network side) and the heads.

Layout of one cache file (FORMAT_VERSION 1)::

    /features/<layer>   float32 (N, D) pooled, or (N, H, W, C) with pool 'none'; chunked by rows
    /views/<layer>      float32 (N, K, ...) K augmented views per image (only with views > 0;
                        axis 1 is the view index; the plain view is /features/<layer>)
    /labels             int32 (N,)    index into attrs['class_names']
    /paths              utf-8 (N,)    image path relative to attrs['data_dir']
    /split              uint8 (N,)    codes named by /split.attrs['names'] = [train, val, test]
    /skipped/paths      utf-8 (M,)    images that could not be decoded, with
    /skipped/reasons    utf-8 (M,)    why
    attrs: format_version, complete, class_names, views, backbone, alpha, weights, image_size, pool,
           layers, layer_indices, preprocess, precision, seed, test_size, val_size, data_dir,
           versions, created, n_images, weights_path (where a local weights file was read;
           its identity is the sha256 in 'weights')

A file only exists under its final name once it is complete (written to a temporary name and
renamed), and readers also check attrs['complete'].
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass

import h5py
import numpy as np

from features.errors import UserError
from features.split import SPLIT_NAMES

FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")
_JSON_ATTRS = ("class_names", "layers", "layer_indices", "versions")


@dataclass(frozen=True)
class CacheConfig:
    """What determines a cache's contents: two runs with equal configs produce equal files."""

    data_dir: str
    backbone: str
    alpha: float | None
    weights: str          # 'imagenet', 'none' or 'sha256:...'
    image_size: int
    pool: str
    layers: tuple[str, ...]
    layer_indices: tuple[int, ...]
    preprocess: str
    precision: str
    seed: int
    test_size: float
    val_size: float
    views: int = 0        # augmented views per image (seeded by `seed`), besides the plain one

    def to_json(self) -> dict:
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["layer_indices"] = list(self.layer_indices)
        return out

    def differences(self, other: "CacheConfig") -> list[str]:
        mine, theirs = self.to_json(), other.to_json()
        return [f"{k}: cache has {theirs[k]!r}, this run asks {mine[k]!r}"
                for k in mine if mine[k] != theirs[k]]

    @classmethod
    def from_json(cls, data: dict) -> "CacheConfig":
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["layers"] = tuple(fields["layers"])
        fields["layer_indices"] = tuple(int(i) for i in fields["layer_indices"])
        return cls(**fields)


def _chunk_rows(row_shape) -> int:
    """Rows per chunk so that one chunk is about 1 MiB: large enough to stream, small to slice."""
    row_bytes = 4 * int(np.prod(row_shape)) or 4
    return int(max(1, min(4096, (1 << 20) // row_bytes)))


def write_cache(path: str, config: CacheConfig, *, class_names, paths, labels, split, shards,
                datasets: dict, skipped, versions: dict, created: str,
                weights_path: str | None = None) -> None:
    """Write a complete cache atomically from `shards`, an iterable of (row_start, {name: array}).

    `datasets` maps each array name ('features/<layer>', 'views/<layer>') to its row shape.
    `shards` must cover rows 0..len(paths) in increasing, contiguous order; nothing but the final
    rename makes the file visible under `path`.
    """
    n = len(paths)
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.create_group("features")
        dsets = {}
        for name, shape in datasets.items():
            shape = tuple(int(s) for s in shape)
            dsets[name] = f.create_dataset(
                name, shape=(n, *shape), dtype="float32",
                chunks=(max(1, min(n, _chunk_rows(shape))), *shape) if n else None)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int32))
        f.create_dataset("paths", data=np.asarray(list(paths), dtype=object), dtype=STR)
        codes = f.create_dataset("split", data=np.asarray(split, dtype=np.uint8))
        codes.attrs["names"] = list(SPLIT_NAMES)
        sk = f.create_group("skipped")
        sk.create_dataset("paths", data=np.asarray([p for p, _ in skipped], dtype=object),
                          dtype=STR)
        sk.create_dataset("reasons", data=np.asarray([r for _, r in skipped], dtype=object),
                          dtype=STR)
        written = 0
        for start, arrays in shards:
            count = len(next(iter(arrays.values()))) if arrays else 0
            if start != written:
                raise RuntimeError(f"cache rows out of order: expected {written}, got {start}")
            for name, values in arrays.items():
                dsets[name][start:start + count] = values
            written += count
        if written != n:
            raise RuntimeError(f"cache incomplete: {written} of {n} rows written")
        attrs = config.to_json()
        attrs.update(class_names=list(class_names), versions=versions, created=created,
                     n_images=n, format_version=FORMAT_VERSION, weights_path=weights_path or "")
        for key, value in attrs.items():
            if key in _JSON_ATTRS:
                value = json.dumps(value)
            elif value is None:
                value = "none"
            f.attrs[key] = value
        f.attrs["complete"] = True
    os.replace(tmp, path)


class Cache:
    """Read access to a complete cache; features are read lazily and can be streamed in chunks."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            partial = os.path.isdir(path + ".partial")
            hint = (" (an interrupted extraction is waiting: re-run the same extract command to "
                    "finish it)") if partial else ""
            raise UserError(f"no feature cache at {path}{hint}")
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise UserError(f"{path} is not a readable HDF5 file ({exc})") from exc
        self.path = path
        attrs = dict(self._file.attrs)
        if not attrs.get("complete") or attrs.get("format_version") is None:
            self.close()
            raise UserError(f"{path} is not a complete bottleneck cache; re-run extract")
        if int(attrs["format_version"]) > FORMAT_VERSION:
            self.close()
            raise UserError(f"{path} was written by a newer bottleneck (format "
                            f"{attrs['format_version']}); upgrade to read it")
        try:
            for key in _JSON_ATTRS:
                attrs[key] = json.loads(attrs[key])
            for name in ("labels", "split", "paths", "features"):
                self._file[name]
        except (KeyError, ValueError, TypeError) as exc:
            self.close()
            raise UserError(f"{path} lacks part of the cache layout ({exc}); re-run extract "
                            "with --overwrite") from exc
        for key, value in list(attrs.items()):
            if isinstance(value, np.generic):
                attrs[key] = value.item()
        if attrs.get("alpha") == "none":
            attrs["alpha"] = None
        self.attrs = attrs
        self.config = CacheConfig.from_json(attrs)
        self.class_names = list(attrs["class_names"])
        self.layers = list(attrs["layers"])
        self.labels = self._file["labels"][:]
        self.split = self._file["split"][:]
        self.paths = [p.decode() if isinstance(p, bytes) else p for p in self._file["paths"][:]]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._file.close()

    def __len__(self):
        return len(self.labels)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        group = self._file["skipped"]
        return [(p.decode() if isinstance(p, bytes) else p, r.decode() if isinstance(r, bytes) else r)
                for p, r in zip(group["paths"][:], group["reasons"][:])]

    def dataset(self, layer: str) -> h5py.Dataset:
        if layer not in self._file["features"]:
            raise UserError(f"layer {layer!r} is not in {self.path}; it holds: {', '.join(self.layers)}")
        return self._file["features"][layer]

    @property
    def n_views(self) -> int:
        return int(self.attrs.get("views", 0) or 0)

    def view_features(self, layer: str, rows=None) -> np.ndarray:
        """Augmented views of `layer` for `rows`: (n, K, D) flattened per view; K may be 0."""
        n = len(self) if rows is None else int(np.asarray(rows).sum() if np.asarray(rows).dtype
                                                 == bool else len(rows))
        if not self.n_views:
            return np.empty((n, 0, self.feature_dim(layer)), np.float32)
        self.dataset(layer)  # a clear error for an unknown layer
        dset = self._file["views"][layer]
        if rows is None:
            data = dset[:]
        else:
            rows = np.asarray(rows)
            rows = np.flatnonzero(rows) if rows.dtype == bool else np.sort(rows)
            data = dset[rows] if len(rows) else np.empty((0, *dset.shape[1:]), np.float32)
        return data.reshape(len(data), data.shape[1], self.feature_dim(layer))

    def feature_dim(self, layer: str) -> int:
        return int(np.prod(self.dataset(layer).shape[1:]))

    def features(self, layer: str, rows=None, flatten: bool = True) -> np.ndarray:
        """Features of `layer` for `rows` (a boolean mask or sorted indices; all by default)."""
        dset = self.dataset(layer)
        if rows is None:
            data = dset[:]
        else:
            rows = np.asarray(rows)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            data = dset[np.sort(rows)] if len(rows) else np.empty((0, *dset.shape[1:]), "float32")
        return data.reshape(len(data), self.feature_dim(layer)) if flatten else data

    def iter_chunks(self, layer: str, rows=None, flatten: bool = True):
        """Yield (row_indices, features) chunk by chunk, so huge caches never sit in memory whole."""
        dset = self.dataset(layer)
        step = dset.chunks[0] if dset.chunks else max(1, len(dset))
        wanted = None if rows is None else np.asarray(rows)
        if wanted is not None and wanted.dtype == bool:
            wanted = np.flatnonzero(wanted)
        for start in range(0, len(dset), step):
            stop = min(start + step, len(dset))
            index = np.arange(start, stop)
            if wanted is not None:
                index = wanted[(wanted >= start) & (wanted < stop)]
                if not len(index):
                    continue
            block = dset[start:stop][index - start]
            yield index, (block.reshape(len(block), self.feature_dim(layer)) if flatten else block)

    def split_mask(self, name: str) -> np.ndarray:
        return self.split == SPLIT_NAMES.index(name)

    def provenance(self) -> dict:
        """What a head fitted on this cache must carry to rebuild its network (JSON-able)."""
        keys = ("backbone", "alpha", "weights", "weights_path", "image_size", "pool", "layers",
                "layer_indices", "preprocess", "precision", "class_names", "data_dir", "seed",
                "test_size", "val_size", "versions")
        return {**{k: self.attrs.get(k) for k in keys}, "cache_path": os.path.abspath(self.path)}

    def summary(self) -> dict:
        """A JSON-able description of the cache: what `info` prints."""
        counts = {name: int(self.split_mask(name).sum()) for name in SPLIT_NAMES}
        per_class = np.bincount(self.labels, minlength=len(self.class_names))
        return {
            "path": self.path,
            "file_mb": round(os.path.getsize(self.path) / 2**20, 3),
            "n_images": len(self),
            "n_skipped": len(self.skipped),
            "split": counts,
            "classes": {c: int(k) for c, k in zip(self.class_names, per_class)},
            "features": {layer: list(self.dataset(layer).shape[1:]) for layer in self.layers},
            "views": self.n_views,
            **{k: self.attrs[k] for k in ("backbone", "alpha", "weights", "image_size", "pool",
                                          "layers", "preprocess", "precision", "seed", "test_size",
                                          "val_size", "data_dir", "created", "versions")},
        }


def newest_cache(directory: str = "features") -> str:
    """The most recently written complete-looking cache under `directory`."""
    found = [p for p in glob.glob(os.path.join(directory, "*.h5")) if os.path.isfile(p)]
    if not found:
        raise UserError(f"no feature cache (*.h5) under {directory}/; run `python cli.py extract "
                        "--data DIR` first, or pass --features FILE.h5")
    return max(found, key=os.path.getmtime)

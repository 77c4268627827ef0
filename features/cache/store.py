"""The HDF5 feature cache: the contract between extraction (network side) and the heads.

Layout of one cache file (FORMAT_VERSION 1)::

    /features/<layer>   float32 (N, D) pooled, or (N, H, W, C) with pool 'none'; chunked by rows
                        (float16 when attrs['storage'] is 'float16': readers still return float32)
    /views/<layer>      float32 (N, K, ...) K augmented views per image (only with views > 0;
                        axis 1 is the view index; the plain view is /features/<layer>)
    /labels             int32 (N,)    index into attrs['class_names']
    /paths              utf-8 (N,)    image path relative to attrs['data_dir']
    /split              uint8 (N,)    codes named by /split.attrs['names'] = [train, val, test]
    /skipped/paths      utf-8 (M,)    images that could not be decoded, with
    /skipped/reasons    utf-8 (M,)    why
    attrs: format_version, complete, class_names, views, backbone, alpha, weights, image_size, pool,
           layers, layer_indices, preprocess, precision, storage, seed, test_size, val_size,
           data_dir,
           versions, created, n_images, generation, lineage (JSON list), weights_path (where a local weights file was read;
           its identity is the sha256 in 'weights')

The attributes other than format_version, complete, created and n_images are the cache's
`Provenance` (features/cache/provenance.py). A file only exists under its final name once it is
complete (written to a temporary name and renamed), and readers also check attrs['complete'].

`Cache` is the one reader: `features(layers, rows)` for one layer or several concatenated,
`views(layers, rows)` for the augmented views, `iter_chunks(layers, rows)` to stream.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import replace

import h5py
import numpy as np

from features.atomic import atomic_path
from features.cache.provenance import Provenance, data_identity
from features.cache.split import SPLIT_NAMES
from features.errors import UserError, check_format_version

FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")
_JSON_ATTRS = ("class_names", "layers", "layer_indices", "versions", "lineage")
_NOT_STORED = ("cache_path", "layer", "feature_layers", "head_options")  # a head's, or the path


STORAGES = ("float32", "float16")      # how feature arrays are stored (extract --storage)


def _chunk_rows(row_shape, itemsize: int = 4) -> int:
    """Rows per chunk so that one chunk is about 1 MiB: large enough to stream, small to slice."""
    row_bytes = itemsize * int(np.prod(row_shape)) or itemsize
    return int(max(1, min(4096, (1 << 20) // row_bytes)))


def write_cache(path: str, provenance: Provenance, *, paths, labels, split, shards,
                datasets: dict, skipped, created: str) -> None:
    """Write a complete cache atomically from `shards`, an iterable of (row_start, {name: array}).

    `datasets` maps each array name ('features/<layer>', 'views/<layer>') to its row shape.
    `shards` must cover rows 0..len(paths) in increasing, contiguous order; nothing but the final
    rename makes the file visible under `path`.
    """
    n = len(paths)
    provenance = replace(provenance, data_id=data_identity(paths, labels, split))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_group("features")
        dsets, dtype = {}, np.dtype(provenance.storage or "float32")
        for name, shape in datasets.items():
            shape = tuple(int(s) for s in shape)
            dsets[name] = f.create_dataset(
                name, shape=(n, *shape), dtype=dtype,
                chunks=(max(1, min(n, _chunk_rows(shape, dtype.itemsize))), *shape) if n else None)
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
        _write_attrs(f, provenance, created=created, n_images=n)


def _write_attrs(f, provenance: Provenance, **extra) -> None:
    attrs = {k: v for k, v in provenance.to_json().items() if k not in _NOT_STORED}
    attrs.update(extra, format_version=FORMAT_VERSION, weights_path=provenance.weights_path or "")
    for key, value in attrs.items():
        if key in _JSON_ATTRS:
            value = json.dumps(value)
        elif value is None:
            value = "none"
        f.attrs[key] = value
    f.attrs["complete"] = True


class Cache:
    """Read access to a complete cache; features are read lazily and can be streamed in chunks."""

    def __init__(self, path: str):
        self.path = path
        self._file = _open_h5(path)
        try:
            self.attrs = _read_attrs(self._file, path)
            self._provenance = Provenance.from_json(
                {**self.attrs, "cache_path": os.path.abspath(path)})
        except (KeyError, ValueError, TypeError) as exc:
            self.close()
            raise UserError(f"{path} lacks part of the cache layout ({exc}); re-run extract "
                            "with --overwrite") from exc
        except UserError:
            self.close()
            raise
        self.class_names = list(self._provenance.class_names)
        self.layers = list(self._provenance.layers)
        self.labels = self._file["labels"][:]
        self.split = self._file["split"][:]
        self.paths = [_text(p) for p in self._file["paths"][:]]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._file.close()

    def __len__(self):
        return len(self.labels)

    def provenance(self) -> Provenance:
        """What a head fitted on this cache carries to rebuild its network (and to be checked)."""
        return self._provenance

    @property
    def skipped(self) -> list[tuple[str, str]]:
        group = self._file["skipped"]
        return [(_text(p), _text(r)) for p, r in zip(group["paths"][:], group["reasons"][:])]

    @property
    def storage(self) -> str:
        """How the arrays are stored on disk: 'float32', or 'float16' (readers return float32)."""
        return self._provenance.storage or "float32"

    def array(self, name: str) -> h5py.Dataset:
        """The stored HDF5 array 'features/<layer>' or 'views/<layer>' itself, for streaming
        readers that convert batch by batch (its dtype is the cache's storage)."""
        if name not in self._file:
            raise UserError(f"{self.path} holds no {name!r}")
        return self._file[name]

    @property
    def n_views(self) -> int:
        return int(self._provenance.views or 0)

    def rows_of(self, name: str, rows) -> np.ndarray:
        """float32 rows (sorted indices) of one stored array, 'features/<layer>' or
        'views/<layer>', in its stored shape: what a grown cache copies."""
        dset = self._file[name]
        rows = np.asarray(rows, dtype=np.int64)
        return _take(dset, rows) if len(rows) else np.empty((0, *dset.shape[1:]), np.float32)

    def split_mask(self, name: str) -> np.ndarray:
        return self.split == SPLIT_NAMES.index(name)

    # ---- the one feature reader

    def select_layers(self, spec: str | None) -> tuple[str, list[str]]:
        """(the --layer value as recorded, [cache layers to concatenate, in order]) for a --layer
        spec: None (the only layer, or all), 'all', or NAME[,NAME...]."""
        if spec in (None, ""):
            return (self.layers[0], self.layers[:1]) if len(self.layers) == 1 else (
                "all", list(self.layers))
        if spec == "all":
            return "all", list(self.layers)
        wanted = [part for part in spec.split(",") if part]
        for name in wanted:
            if name not in self.layers:
                raise UserError(f"--layer {name!r} is not in {self.path}; it holds: "
                                f"{', '.join(self.layers)} (or pass --layer all)")
        return spec, wanted

    def dataset(self, layer: str) -> h5py.Dataset:
        if layer not in self._file["features"]:
            raise UserError(f"layer {layer!r} is not in {self.path}; it holds: "
                            f"{', '.join(self.layers)}")
        return self._file["features"][layer]

    def feature_dim(self, layers) -> int:
        """Flattened width of one layer, or of several concatenated."""
        return sum(int(np.prod(self.dataset(layer).shape[1:])) for layer in _as_list(layers))

    def features(self, layers, rows=None, flatten: bool = True) -> np.ndarray:
        """float32 features of `rows` (a boolean mask or indices, sorted here; all by default):
        one layer (`flatten=False` keeps a map's shape), or several flattened and concatenated."""
        rows = _rows(rows, len(self))
        names = _as_list(layers)
        if isinstance(layers, str) and not flatten:
            dset = self.dataset(layers)
            return _take(dset, rows) if len(rows) else np.empty((0, *dset.shape[1:]), np.float32)
        parts = [self._flat(self.dataset(name), rows) for name in names]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def views(self, layers, rows=None) -> np.ndarray:
        """(n, K, D): the K augmented views of `rows`, layers concatenated like `features`;
        K is 0 for a cache made without --views."""
        rows = _rows(rows, len(self))
        if not self.n_views:
            return np.empty((len(rows), 0, self.feature_dim(layers)), np.float32)
        parts = []
        for name in _as_list(layers):
            self.dataset(name)   # a clear error for an unknown layer
            dset = self._file["views"][name]
            data = _take(dset, rows) if len(rows) else np.empty((0, *dset.shape[1:]), np.float32)
            parts.append(data.reshape(len(data), data.shape[1], -1))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)

    def iter_chunks(self, layers, rows=None, block_rows: int | None = None, rng=None):
        """Yield (row indices, features) a block of cache rows at a time, so a huge cache never
        sits in memory whole; blocks in `rng`'s random order when given. Default block: the
        HDF5 chunk of the first layer."""
        rows = _rows(rows, len(self))
        if not len(rows):
            return
        first = self.dataset(_as_list(layers)[0])
        step = block_rows or (first.chunks[0] if first.chunks else len(first))
        starts = np.arange(0, int(rows[-1]) + 1, step)
        for start in (rng.permutation(starts) if rng is not None else starts):
            index = rows[(rows >= start) & (rows < start + step)]
            if len(index):
                yield index, self.features(layers, index)

    @staticmethod
    def _flat(dset, rows) -> np.ndarray:
        width = int(np.prod(dset.shape[1:]))
        if not len(rows):
            return np.empty((0, width), np.float32)
        return _take(dset, rows).reshape(len(rows), width)

    def summary(self) -> dict:
        """A JSON-able description of the cache: what `info` prints."""
        counts = {name: int(self.split_mask(name).sum()) for name in SPLIT_NAMES}
        per_class = np.bincount(self.labels, minlength=len(self.class_names))
        prov = self._provenance.to_json()
        return {
            "path": self.path,
            "file_mb": round(os.path.getsize(self.path) / 2**20, 3),
            "n_images": len(self),
            "n_skipped": len(self.skipped),
            "split": counts,
            "classes": {c: int(k) for c, k in zip(self.class_names, per_class)},
            "features": {layer: list(self.dataset(layer).shape[1:]) for layer in self.layers},
            "views": self.n_views,
            "created": self.attrs.get("created"),
            "generation": self._provenance.generation,
            **{k: prov[k] for k in ("backbone", "alpha", "weights", "image_size", "pool",
                                    "layers", "preprocess", "precision", "storage", "seed",
                                    "test_size", "val_size", "data_dir", "versions")},
        }


def read_provenance(path: str) -> Provenance | None:
    """The provenance of the complete cache at `path` from its attributes alone, or None when
    there is no readable cache there."""
    try:
        with h5py.File(path, "r") as f:
            return Provenance.from_json(_read_attrs(f, path))
    except (OSError, KeyError, ValueError, TypeError, UserError):
        return None


def _open_h5(path: str):
    if not os.path.isfile(path):
        partial = os.path.isdir(path + ".partial")
        hint = (" (an interrupted extraction is waiting: re-run the same extract command to "
                "finish it)") if partial else ""
        raise UserError(f"no feature cache at {path}{hint}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({exc})") from exc


def _read_attrs(f, path: str) -> dict:
    """The root attributes as Python values; refuses an incomplete or newer-format file."""
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    if not attrs.get("complete") or attrs.get("format_version") is None:
        raise UserError(f"{path} is not a complete bottleneck cache; re-run extract")
    check_format_version(attrs["format_version"], FORMAT_VERSION, path)
    for key in _JSON_ATTRS:
        if key in attrs or key != "lineage":   # caches before growth have no lineage
            attrs[key] = json.loads(attrs[key])
    for name in ("labels", "split", "paths", "features"):
        if name not in f:
            raise UserError(f"{path} has no {name!r} dataset, which every bottleneck cache "
                            "holds; re-run extract (with --overwrite) to rebuild it")
    return attrs


def _as_list(layers) -> list[str]:
    return [layers] if isinstance(layers, str) else list(layers)


def _rows(rows, n: int) -> np.ndarray:
    """Sorted row indices from None (all), a boolean mask or indices."""
    if rows is None:
        return np.arange(n)
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool else np.sort(rows.astype(np.int64))


def _take(dset, rows: np.ndarray) -> np.ndarray:
    """dset[rows] for sorted rows: one contiguous read when the rows are dense (h5py's point
    selection is slow), a selection otherwise."""
    first, last = int(rows[0]), int(rows[-1]) + 1
    if last - first <= 2 * len(rows):
        out = dset[first:last][rows - first]
    else:
        out = dset[rows]
    return out.astype(np.float32, copy=False)   # float16 storage is read back as float32


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def newest_cache(directory: str = "features") -> str:
    """The most recently written complete-looking cache under `directory`."""
    found = [p for p in glob.glob(os.path.join(directory, "*.h5")) if os.path.isfile(p)]
    if not found:
        raise UserError(f"no feature cache (*.h5) under {directory}/; run `python cli.py extract "
                        "--data DIR` first, or pass --features FILE.h5")
    return max(found, key=os.path.getmtime)

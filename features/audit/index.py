"""The similarity index of a cache: its rows in the cosine space (features/audit/space.py) in an
exact faiss inner-product index, kept beside the cache and rebuilt when the cache changes.

faiss was measured against scikit-learn's NearestNeighbors (brute cosine) on this machine
(BENCHMARKS.md, "Audit"): 10 queries against 100,000 rows are well under a second with either,
and the audit's all-rows neighbour graph is 3.6-5x faster with faiss. The index is exact
(IndexFlatIP): at the sizes a cache holds, approximate search would trade answers for time that
is not needed.

The file `<cache>.index-<layer>.npz` records the cache's data_id and generation, the layers and
the recipe of the space; an index whose record differs from the cache is rebuilt (a grown cache,
a re-extraction), never used.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass

import numpy as np

from features.audit.space import SPACE, to_space
from features.errors import UserError

INDEX_FORMAT = 1
_BLOCK = 8192   # rows read from the cache at a time


@dataclass(frozen=True)
class IndexRecord:
    """What an index was built from: an index is used only for a cache whose record is equal."""

    data_id: str
    generation: int
    layers: tuple[str, ...]
    n_rows: int
    dim: int
    space: str = SPACE
    format: int = INDEX_FORMAT

    @classmethod
    def of(cls, cache, layers) -> IndexRecord:
        prov = cache.provenance()
        return cls(prov.data_id, int(prov.generation), tuple(layers), len(cache),
                   cache.feature_dim(layers))


def faiss():
    """The faiss module, or a one-line error naming the extra that brings it."""
    try:
        import faiss as module
    except ImportError:
        raise UserError("this command needs faiss: pip install 'bottleneck-transfer[audit]' "
                        "(or pip install faiss-cpu)") from None
    return module


@dataclass
class Graph:
    """Each row's nearest other rows (n, k) and their cosine similarities, best first."""

    rows: np.ndarray
    sims: np.ndarray


class SimilarityIndex:
    """Exact cosine search over a cache's rows (row numbers are the cache's)."""

    def __init__(self, index, centre: np.ndarray, record: IndexRecord):
        self.index, self.centre, self.record = index, np.asarray(centre, np.float32), record

    def __len__(self):
        return int(self.index.ntotal)

    def search(self, Z, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows), each (n, k), best first, for rows `Z` already in the space;
        rows beyond the index are -1."""
        k = max(1, min(int(k), len(self)))
        sims, rows = self.index.search(np.ascontiguousarray(Z, np.float32), k)
        return sims, rows

    def query(self, X, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` for raw features X (n, dim), moved into the space first."""
        return self.search(to_space(X, self.centre), k)

    def vectors(self) -> np.ndarray:
        """Every indexed row in the space (n, dim), in cache order."""
        return self.index.reconstruct_n(0, len(self))

    def graph(self, k: int) -> Graph:
        """Every row's k nearest other rows (itself left out, also when an exact copy ties)."""
        k = max(1, min(int(k), len(self) - 1))
        sims, rows = self.search(self.vectors(), k + 1)
        own = rows == np.arange(len(rows))[:, None]
        keep = ~own
        keep[~own.any(axis=1), -1] = False   # self not found among ties: drop the last instead
        return Graph(rows[keep].reshape(len(rows), k), sims[keep].reshape(len(rows), k))

    def save(self, path: str) -> None:
        from features.atomic import atomic_path

        data = faiss().serialize_index(self.index)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, index=data, centre=self.centre,
                     record=np.array(json.dumps(asdict(self.record))))


def index_path(cache_path: str, layer: str) -> str:
    """Where the index of `layer` (the --layer value as recorded) of a cache lives."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "+", layer)
    return f"{os.path.splitext(cache_path)[0]}.index-{safe}.npz"


def build_index(cache, layers) -> SimilarityIndex:
    """Read the cache's rows a block at a time: the centre in one pass, the index in a second."""
    from features.audit.space import power

    module = faiss()
    dim = cache.feature_dim(layers)
    total = np.zeros(dim, np.float64)
    for _, X in cache.iter_chunks(layers, block_rows=_BLOCK):
        total += power(X).sum(axis=0, dtype=np.float64)
    centre = (total / max(1, len(cache))).astype(np.float32)
    index = module.IndexFlatIP(dim)
    for _, X in cache.iter_chunks(layers, block_rows=_BLOCK):
        index.add(to_space(X, centre))
    return SimilarityIndex(index, centre, IndexRecord.of(cache, layers))


def read_index(path: str) -> SimilarityIndex | None:
    """The index saved at `path`, or None when there is none readable there."""
    try:
        with np.load(path, allow_pickle=False) as data:
            record = json.loads(str(data["record"]))
            record["layers"] = tuple(record["layers"])
            return SimilarityIndex(faiss().deserialize_index(data["index"]), data["centre"],
                                   IndexRecord(**record))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def load_or_build(cache, layer: str, layers, say=print, save: bool = True) -> SimilarityIndex:
    """The cache's index for `layers`: the saved one when its record matches the cache, else a
    new one (saved beside the cache when that folder can be written)."""
    path = index_path(cache.path, layer)
    want = IndexRecord.of(cache, layers)
    found = read_index(path) if os.path.isfile(path) else None
    if found is not None and found.record == want:
        return found
    if found is not None:
        say(f"rebuilding the similarity index {path}: {_why_stale(found.record, want)}")
    index = build_index(cache, layers)
    if save:
        try:
            index.save(path)
        except OSError as exc:
            say(f"notice: could not save the similarity index beside the cache ({exc.strerror});"
                " it was built in memory for this run")
    return index


def _why_stale(old: IndexRecord, new: IndexRecord) -> str:
    if old.generation != new.generation:
        return f"the cache grew (generation {old.generation} -> {new.generation})"
    if old.data_id != new.data_id or old.n_rows != new.n_rows:
        return "the cache holds other images than when it was built"
    return "it was built with another recipe or layer"

"""`similar`'s index at 100,000 cached rows: build, load, and 10 queries, against scikit-learn.

    python bench/similar.py [--rows 100000] [--dim 256] [--queries 10] [--graph-rows 10000]

Writes a synthetic cache (non-negative 'pooled' features of 20 classes, like avg-pooled ReLU
maps) to a temporary folder, builds its similarity index (features/audit/index.py, saved beside
the cache), then times, best of 5: loading the saved index and answering `--queries` queries
(what `similar` does after the network), and the same queries through scikit-learn's
NearestNeighbors (brute cosine, fitted on the same rows in the same space: the peer), checking
both return the same neighbours. `--graph-rows`: the audit's neighbour graph (every row's 21
nearest) over that many rows, faiss against scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np


def synthetic_cache(path: str, rows: int, dim: int, seed: int = 0) -> None:
    from features.cache.provenance import Provenance
    from features.cache.store import write_cache

    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, size=(20, dim)).astype(np.float32)
    labels = rng.integers(0, 20, rows).astype(np.int32)
    prov = Provenance(data_dir="/synthetic", backbone="mobilenet", alpha=0.25, weights="none",
                      image_size=224, pool="avg", layers=("pool",), layer_indices=(0,),
                      preprocess="mobilenet", class_names=tuple(f"c{i}" for i in range(20)))

    def shards():
        for start in range(0, rows, 10_000):
            part = labels[start:start + 10_000]
            noise = rng.gamma(1.0, 0.5, size=(len(part), dim)).astype(np.float32)
            yield start, {"features/pool": centres[part] * noise}

    write_cache(path, prov, paths=[f"c{y}/{i}.jpg" for i, y in enumerate(labels)], labels=labels,
                split=np.zeros(rows, np.uint8), shards=shards(), datasets={"features/pool": [dim]},
                skipped=[], created="now")


def best_of(fn, times: int = 5) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(times):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def main(argv=None) -> None:
    from sklearn.neighbors import NearestNeighbors

    from features.audit.index import index_path, load_or_build, read_index
    from features.cache.store import Cache

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--graph-rows", type=int, default=10_000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "synthetic.h5")
        synthetic_cache(path, args.rows, args.dim)
        with Cache(path) as cache:
            started = time.perf_counter()
            index = load_or_build(cache, "pool", ["pool"], say=lambda *a: None)
            build = time.perf_counter() - started
            queries = cache.features("pool", np.arange(args.queries) * (args.rows // args.queries))
        saved = index_path(path, "pool")
        file_mb = os.path.getsize(saved) / 2**20
        load_and_query, (_sims, rows) = best_of(lambda: read_index(saved).query(queries, 10))
        query_only, _ = best_of(lambda: index.query(queries, 10))
        space = index.vectors()
        nn_fit, nn = best_of(lambda: NearestNeighbors(n_neighbors=10, metric="cosine",
                                                      algorithm="brute").fit(space), 1)
        from features.audit.space import to_space

        nn_query, (_dist, nn_rows) = best_of(lambda: nn.kneighbors(to_space(queries,
                                                                           index.centre)))
        sub = space[:args.graph_rows]
        import faiss

        flat = faiss.IndexFlatIP(sub.shape[1])
        flat.add(sub)
        graph_faiss, _ = best_of(lambda: flat.search(sub, 21), 1)
        sk = NearestNeighbors(n_neighbors=21, metric="cosine", algorithm="brute").fit(sub)
        graph_sklearn, _ = best_of(lambda: sk.kneighbors(sub), 1)
    result = {
        "rows": args.rows, "dim": args.dim, "queries": args.queries,
        "index_build_s": round(build, 3), "index_file_mb": round(file_mb, 1),
        "load_and_query_s": round(load_and_query, 4), "query_only_s": round(query_only, 4),
        "sklearn_fit_s": round(nn_fit, 4), "sklearn_query_s": round(nn_query, 4),
        "same_neighbours": bool((rows == nn_rows).mean() > 0.99),
        "sklearn_over_faiss_query": round(nn_query / query_only, 2),
        "graph_rows": args.graph_rows, "graph_faiss_s": round(graph_faiss, 3),
        "graph_sklearn_s": round(graph_sklearn, 3),
        "graph_sklearn_over_faiss": round(graph_sklearn / graph_faiss, 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""`similar`: the nearest cached images to new images, by cosine similarity of their features.

The query images go through the network the cache was made with, rebuilt from its provenance
(bottleneck/predict/predictor.py: the same backbone, weights, taps, pooling and preprocessing),
then through the cache's similarity index (features/audit/index.py), which is built on first
use, kept beside the cache and rebuilt when the cache changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.errors import UserError


@dataclass
class SimilarOptions:
    inputs: tuple[str, ...]
    features: str | None = None
    layer: str | None = None
    k: int = 10
    weights: str | None = None
    batch_size: int = 32


def check_cache_paths(cache) -> None:
    """Neighbours are named by their paths: a cache without them cannot answer."""
    if not len(cache) or not any(cache.paths):
        raise UserError(f"{cache.path} records no image paths (0 rows, or paths left empty); "
                        "re-extract it with `python cli.py extract` to get a cache `similar` "
                        "can name neighbours from")


def neighbours_of(cache, index, features, k: int) -> list[dict]:
    """The k nearest cached rows of one query's features, best first."""
    from features.audit.duplicates import split_name

    sims, rows = index.query(features[None], k)
    return [{"rank": rank + 1, "path": cache.paths[row], "similarity": round(float(sim), 6),
             "class": cache.class_names[int(cache.labels[row])],
             "split": split_name(cache.split[row])}
            for rank, (sim, row) in enumerate(zip(sims[0], rows[0])) if row >= 0]


def find_similar(opts: SimilarOptions, say=print, on_query=None) -> dict:
    """Every query's neighbours (or why it could not be read); `on_query(row)` sees each."""
    from bottleneck.predict.predictor import collect_images, load_feature_predictor, predict_paths
    from features.audit.index import load_or_build
    from features.cache.store import Cache, newest_cache

    if opts.k < 1:
        raise UserError("-k must be at least 1")
    if opts.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    with Cache(opts.features or newest_cache()) as cache:
        layer, layers = cache.select_layers(opts.layer)
        check_cache_paths(cache)
        paths = collect_images(list(opts.inputs))
        index = load_or_build(cache, layer, layers, say)
        prov = cache.provenance().for_head(layer, layers)
        predictor = load_feature_predictor(prov, opts.weights)
        queries = []
        for path, features, reason in predict_paths(predictor, paths, opts.batch_size):
            row = ({"query": path, "neighbours": [], "error": reason} if features is None else
                   {"query": path, "neighbours": neighbours_of(cache, index, features, opts.k)})
            queries.append(row)
            if on_query:
                on_query(row)
        return {"features": cache.path, "layer": layer, "data_dir": prov.data_dir,
                "index_rows": len(index), "k": opts.k, "queries": queries,
                "n_failed": sum("error" in q for q in queries)}

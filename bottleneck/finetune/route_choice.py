"""Which stage-3 route to take: full images, or the cache route (`finetune --from-cache`).

One rule, used by `advise` (which says it, with its evidence) and `run` (which takes it). The
image route runs the frozen bottom of the network once per train image per epoch; the cache
route runs it (1 + K) times per image once (`extract --pool none --views K` at the cut) and then
trains the top alone. With no augmentation (K = 0, what `run` uses) the two routes compute the
same network (BatchNorm is frozen in both), so the cache route pays whenever the maps are reused,
i.e. from two epochs on, and fits the disk. Measured (BENCHMARKS.md, "Stage 3 from the cache"):
on flowers5 on 2 CPU cores, an epoch of the top took 3 s above MobileNet 0.25's
conv_pw_11_relu and 5-7 s above its conv_pw_5_relu, against 19 s for a whole-network epoch on
the images; MobileNetV2 at 160 px above block_12_add about 10 s against about 50 s.
Importing this module imports no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.cache.sizing import ITEMSIZE, human


@dataclass(frozen=True)
class RouteChoice:
    """The route, the cut (the layer whose map is cached), and why."""

    route: str                 # "cache" | "images"
    cut: str | None            # the cached layer: it feeds the first trainable layer
    map_shape: tuple | None    # (H, W, C) of one map at the run's image size
    views: int
    storage: str
    reasons: tuple[str, ...]

    @property
    def kb_per_image(self) -> float | None:
        if self.map_shape is None:
            return None
        return round((1 + self.views) * int(np.prod(self.map_shape))
                     * ITEMSIZE[self.storage] / 1024, 1)

    def to_json(self) -> dict:
        return {"route": self.route, "cut": self.cut,
                "map_shape": list(self.map_shape) if self.map_shape else None,
                "views": self.views, "storage": self.storage,
                "kb_per_image": self.kb_per_image, "reasons": list(self.reasons)}


def choose_route(*, epochs: int, n_images: int, cut: str | None, map_shape, free_disk: int,
                 views: int = 0, storage: str = "float16", why_no_cut: str = "") -> RouteChoice:
    """The cache route when there is a cut, the maps are reused (epochs >= 2) and they fit the
    disk (journal and file at once); else the image route. Every branch says why."""
    shape = tuple(int(d) for d in map_shape) if map_shape is not None else None
    if cut is None or shape is None:
        return RouteChoice("images", None, None, views, storage,
                           (f"image route: no cut for a map cache ({why_no_cut or 'none found'})",))
    total = n_images * (1 + views) * int(np.prod(shape)) * ITEMSIZE[storage]
    size = (f"maps of {cut} {'x'.join(map(str, shape))} in {storage}: "
            f"{(1 + views) * int(np.prod(shape)) * ITEMSIZE[storage] / 1024:.1f} KB per image, "
            f"{human(total)} for {n_images} images")
    if epochs < 2:
        return RouteChoice("images", cut, shape, views, storage,
                           (f"image route: {epochs} epoch uses the maps once, so caching them "
                            f"costs what it saves ({size})",))
    if 2 * total > free_disk:
        return RouteChoice("images", cut, shape, views, storage,
                           (f"image route: the {size} need {human(2 * total)} of disk while "
                            f"written and {human(free_disk)} is free",))
    return RouteChoice("cache", cut, shape, views, storage, (
        f"cache route: {size}; the frozen bottom runs {1 + views} time(s) per image once "
        f"instead of once per image in each of {epochs} epochs, and only the layers above "
        f"{cut} train (flowers5, 2 CPU cores: MobileNet 0.25 at 224 px 3 s an epoch above "
        "conv_pw_11_relu against 19 s on the images, MobileNetV2 at 160 px about 10 s above "
        "block_12_add against about 50 s; BENCHMARKS.md, 'Stage 3 from the cache')",))


def cut_below(body, unfreeze: int, tap: int):
    """(cut layer name, its (H, W, C), '' ) for fine-tuning `body` from layer `unfreeze` up to
    layer `tap`: the map that feeds `unfreeze`, if no connection (a residual) crosses it; else
    (None, None, why)."""
    from bottleneck.finetune.maps import layer_feeding
    from features.tf import keras

    name = layer_feeding(body, unfreeze)
    try:
        keras.Model(body.get_layer(name).output, body.layers[tap].output)
    except ValueError:
        return None, None, f"a residual connection crosses {name}"
    return name, tuple(int(d) for d in body.get_layer(name).output.shape[1:]), ""

"""How big a cache will be, before it is written: bytes per image per layer, per view, in all.

A pooled feature is small (256 floats), but a whole map is not: a 14x14x256 map is 200 KB per
image in float32 (100 KB in float16), and K augmented views multiply it by 1 + K. `extract --plan`
prints this table and `extract` refuses, before any work, a cache that would not fit the free
disk (the journal of a run in progress and the final file are on disk at once).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np

ITEMSIZE = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class LayerSize:
    """One tapped layer's stored row: its shape, and its bytes per image (one view)."""

    layer: str
    shape: tuple[int, ...]
    storage: str

    @property
    def bytes_per_image(self) -> int:
        return int(np.prod(self.shape)) * ITEMSIZE[self.storage]


@dataclass(frozen=True)
class CachePlan:
    """The sizes of a cache of `n_images` images with `views` augmented views per image."""

    layers: tuple[LayerSize, ...]
    n_images: int
    views: int

    @property
    def bytes_per_image(self) -> int:
        """All layers of one image, plain view and K views."""
        return (1 + self.views) * sum(layer.bytes_per_image for layer in self.layers)

    @property
    def total_bytes(self) -> int:
        return self.n_images * self.bytes_per_image

    @property
    def disk_bytes(self) -> int:
        """What a run needs free at its peak: the journal and the final file, both whole."""
        return 2 * self.total_bytes

    def rows(self) -> list[dict]:
        """One JSON-able row per layer: shape, storage, KB per image and view, MB in all."""
        return [{"layer": s.layer, "shape": list(s.shape), "storage": s.storage,
                 "kb_per_image": round(s.bytes_per_image / 1024, 1),
                 "mb_total": round(s.bytes_per_image * self.n_images * (1 + self.views) / 2**20,
                                   1)} for s in self.layers]


def free_bytes(path: str) -> int:
    """Free bytes on the file system that will hold `path` (its nearest existing folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    return int(shutil.disk_usage(folder or "/").free)


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable; else total physical)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def human(n_bytes: float) -> str:
    """1.2 GB, 340.5 MB, 12.0 KB."""
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{int(n_bytes)} B"

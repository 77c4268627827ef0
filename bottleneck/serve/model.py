"""The served model: loaded once per process, uploads checked and decoded the way predict decodes
files (bottleneck.predict.inputs), images run in batches, rows shaped as predict's JSON rows.

`ServedModel.infer_one` is where the engines differ: the local server hands each image to a
Batcher (batcher.py), Ray Serve to its own `@serve.batch` method (ray_app.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bottleneck.serve.limits import BadInput, check_count, check_upload
from bottleneck.serve.options import ServeOptions


@dataclass
class Counters:
    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0


class ServedModel:
    """A predictor with its description, a bounded decode pool and running counters."""

    def __init__(self, options: ServeOptions):
        from bottleneck.predict.predictor import load_predictor
        from bottleneck.worker import usable_cores

        self.options = options
        self.predictor = load_predictor(options.model, options.weights)
        self.description = describe(self.predictor, options)
        self.decoder = ThreadPoolExecutor(options.decode_threads or len(usable_cores()),
                                          thread_name_prefix="bottleneck-decode")
        self.counters, self._lock, self.started = Counters(), threading.Lock(), time.time()
        self.decoding = 0   # images accepted and not yet decoded (the batcher's `coming`)

    def run_batch(self, inputs: list):
        """(n, classes) probabilities of n images' inputs: one network call."""
        from bottleneck.predict.inputs import stack_inputs

        proba = self.predictor.predict_images(stack_inputs(self.predictor, inputs))
        with self._lock:
            self.counters.batches += 1
            self.counters.largest_batch = max(self.counters.largest_batch, len(inputs))
        return proba

    def warm_up(self) -> None:
        """One call on a blank image, so the first request does not pay for tracing."""
        import numpy as np

        self.run_batch([[np.zeros((s, s, 3), np.float32) for s in self.predictor.input_sizes]])
        with self._lock:
            self.counters.batches = self.counters.largest_batch = 0

    def prepare(self, data: bytes, name: str):
        """One upload as the predictor's input; BadInput (naming the file) if it is refused."""
        from bottleneck.predict.inputs import image_input

        try:
            check_upload(data, self.options.max_pixels)
            one, reason = image_input(self.predictor, data)
        except BadInput as exc:
            raise BadInput(exc.status, f"{name}: {exc.message}") from None
        finally:
            with self._lock:
                self.decoding -= 1
        if one is None:
            raise BadInput(422, f"{name}: {reason}")
        return one

    async def infer_one(self, item):
        raise NotImplementedError

    async def predict(self, uploads: list[tuple[str, bytes]], top_k: int | None) -> list[dict]:
        """predict's JSON row ({file, label, probability, top_k}) for each (name, bytes)."""
        from bottleneck.predict.base import top_classes

        check_count(len(uploads), self.options.max_images)
        with self._lock:
            self.decoding += len(uploads)
        loop = asyncio.get_running_loop()
        inputs = await asyncio.gather(*(loop.run_in_executor(self.decoder, self.prepare, data,
                                                             name) for name, data in uploads))
        rows = await asyncio.gather(*(self.infer_one(one) for one in inputs))
        names = self.predictor.class_names
        k = min(top_k or self.options.top_k, len(names))
        with self._lock:
            self.counters.requests += 1
            self.counters.images += len(uploads)
        out = []
        for (name, _), row in zip(uploads, rows):
            top = top_classes(row, names, k)
            out.append({"file": name, "label": top[0][0], "probability": top[0][1], "top_k": top})
        return out

    def health(self) -> dict:
        c = self.counters
        return {"status": "ok", "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1),
                "requests": c.requests, "images": c.images, "batches": c.batches,
                "mean_batch": round(c.images / c.batches, 2) if c.batches else None,
                "largest_batch": c.largest_batch, "rss_mb": rss_mb()}

    def close(self) -> None:
        self.decoder.shutdown(wait=False, cancel_futures=True)


class LocalModel(ServedModel):
    """The uvicorn worker's model: images batched by a Batcher on one inference thread."""

    def __init__(self, options: ServeOptions):
        from bottleneck.serve.batcher import Batcher

        super().__init__(options)
        self.warm_up()
        self.batcher = Batcher(self.run_batch, options.max_batch, options.max_wait_ms / 1000,
                               options.max_queue, coming=lambda: self.decoding)

    async def infer_one(self, item):
        return await self.batcher.submit(item)

    def health(self) -> dict:
        return {**super().health(), "waiting": self.batcher.waiting}

    def close(self) -> None:
        self.batcher.close()
        super().close()


def describe(predictor, options: ServeOptions) -> dict:
    """GET /info: the classes, sizes, the model file's identity and provenance, the settings."""
    from bottleneck import __version__

    path = predictor.path
    return {"model": os.path.abspath(path), "sha256": file_sha256(path),
            "bytes": os.path.getsize(path), "modified": time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(path))),
            "kind": predictor.kind, "classes": list(predictor.class_names),
            "image_sizes": list(predictor.input_sizes), "info": predictor.info,
            "settings": options.public(), "bottleneck": __version__}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rss_mb() -> float | None:
    """This process's resident memory now (Linux), in MiB."""
    try:
        with open("/proc/self/statm") as handle:
            return round(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None

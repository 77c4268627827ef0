"""The same application on Ray Serve, for more than one machine: each replica loads the model
once and batches with Ray Serve's own `@serve.batch` (its equivalent of batcher.py); the routes,
limits and errors are app.py's. The model file (and a head's weights file) must be readable at
the same path on every node."""

from __future__ import annotations

import asyncio

from ray import serve

from bottleneck.serve.model import ServedModel
from bottleneck.serve.options import ServeOptions

APP_NAME = "bottleneck"


class RayModel(ServedModel):
    """A replica's model: images gathered by Ray Serve's batcher, run on a worker thread so the
    replica's event loop keeps parsing requests meanwhile."""

    def __init__(self, options: ServeOptions):
        super().__init__(options)
        self.warm_up()
        self._batched.set_max_batch_size(options.max_batch)
        self._batched.set_batch_wait_timeout_s(options.max_wait_ms / 1000)

    async def infer_one(self, item):
        return await self._batched(item)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list):
        return list(await asyncio.to_thread(self.run_batch, items))


@serve.ingress()
class Replica:
    """One Ray Serve replica: the model, and app.py's routes over it."""

    def __init__(self, options_json: str):
        self.model = RayModel(ServeOptions.from_json(options_json))

    def __serve_build_asgi_app__(self):
        from bottleneck.serve.app import create_app

        return create_app(self.model)


def application(options: ServeOptions):
    """The bound Ray Serve application for `options` (replicas, one CPU each)."""
    deployment = serve.deployment(Replica, name="model", num_replicas=options.replicas,
                                  ray_actor_options={"num_cpus": 1},
                                  max_ongoing_requests=max(options.max_queue, 8))
    return deployment.bind(options.to_json())


def start_on_ray(options: ServeOptions) -> str:
    """Connect to (or start) Ray, start Serve's HTTP proxy on host:port, deploy; the URL."""
    import ray

    if not ray.is_initialized():
        ray.init(address=options.address, logging_level="ERROR")
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(application(options), name=APP_NAME, route_prefix="/")
    return f"http://{options.host}:{options.port}/"


def serve_on_ray(options: ServeOptions, say=print) -> dict:
    """Deploy, then keep the driver alive until Ctrl-C, when the application is taken down."""
    import time

    url = start_on_ray(options)
    say(f"serving {options.model} on Ray Serve ({options.replicas} replica(s)) at {url} "
        "(Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(APP_NAME)
    return {"url": url, "replicas": options.replicas, "engine": "ray"}

"""serve --engine ray: the same application on Ray Serve (a local Ray with 2 CPUs, one replica)
answers with the rows of the in-process server, batches, and refuses bad input the same way."""

from __future__ import annotations

import os

import pytest

from .test_serve import _assert_same_rows, _client, _free_port, _post, _read, images, models  # noqa: F401

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[ray]')")
httpx = pytest.importorskip("httpx")


def test_ray_serve_answers_as_the_local_server(models, images):  # noqa: F811
    from ray import serve

    from bottleneck.serve.options import ServeOptions
    from bottleneck.serve.ray_app import start_on_ray

    options = ServeOptions(model=models["head"], engine="ray", port=_free_port(), max_images=3)
    local = _post(_client(models["head"]), images[:3]).json()["predictions"]
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False)
    try:
        url = start_on_ray(options)
        files = [("file", (os.path.basename(p), _read(p))) for p in images[:3]]
        served = httpx.post(url + "predict", files=files, timeout=60)
        assert served.status_code == 200, served.text
        _assert_same_rows(served.json()["predictions"], {r["file"]: r for r in local})
        refused = httpx.post(url + "predict", files=files + files[:1], timeout=60)
        assert refused.status_code == 413 and "--max-images" in refused.json()["error"]
        assert httpx.get(url + "health", timeout=60).json()["images"] == 3
    finally:
        serve.shutdown()
        ray.shutdown()

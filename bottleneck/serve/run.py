"""Start serving: uvicorn with the model loaded in this process (one worker), or uvicorn's
worker processes (each loads the model once, from the options in its environment), or Ray
Serve (ray_app.py)."""

from __future__ import annotations

import os

from bottleneck.serve.options import OPTIONS_ENV, ServeOptions


def serve(options: ServeOptions, say=print) -> dict:
    """Serve until interrupted; returns what was served."""
    if options.engine == "ray":
        from bottleneck.serve.ray_app import serve_on_ray

        return serve_on_ray(options, say)
    import uvicorn

    url = f"http://{options.host}:{options.port}/"
    settings = {"host": options.host, "port": options.port, "log_level": "warning",
                "access_log": False, "server_header": False, "timeout_keep_alive": 15}
    if options.workers > 1:
        os.environ[OPTIONS_ENV] = options.to_json()
        say(f"starting {options.workers} workers, each loading {options.model}; serving on "
            f"{url} once they are up (Ctrl-C stops)")
        uvicorn.run("bottleneck.serve.app:app_from_env", factory=True, workers=options.workers,
                    **settings)
        return {"url": url, "workers": options.workers}
    from bottleneck.serve.app import create_app
    from bottleneck.serve.model import LocalModel

    model = LocalModel(options)
    if model.predictor.info.get("warning"):
        say(f"warning: {model.predictor.info['warning']}")
    say(f"serving {options.model} ({len(model.predictor.class_names)} classes) on {url}: "
        f"the page at /, POST /predict, GET /health, GET /info (Ctrl-C stops)")
    uvicorn.run(create_app(model), **settings)
    return {"url": url, "workers": 1, **{k: v for k, v in model.health().items()
                                        if k in ("requests", "images", "batches")}}

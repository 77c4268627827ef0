"""`serve`: a trained model as a web service (POST /predict, GET /health, GET /info) and an
upload page at `/`, with dynamic batching, input limits and an optional bearer token."""

from __future__ import annotations

import importlib.util
import os
import socket

from features.errors import UserError


def add_parser(sub):
    from bottleneck.serve.options import TOKEN_ENV, ServeOptions

    d = ServeOptions(model="")
    p = sub.add_parser(
        "serve", help="serve a head, ensemble or fine-tuned network over HTTP (and a page at /)",
        description="Load the model once, then answer POST /predict (multipart: one or more "
                    "'file' fields; JSON rows as `predict --json` prints, with the same numbers), "
                    "GET /health, GET /info, and a page at / to drop an image on. Concurrent "
                    "requests are batched into one network call. Bad input gets a 4xx with a "
                    "one-line JSON error and the server keeps serving. joblib files run code "
                    "when loaded: only serve models you trust.")
    p.add_argument("--model", required=True, metavar="HEAD.joblib|ENSEMBLE.joblib|MODEL.keras",
                   help="what predict takes: a head from fit/fit-*, an ensemble, or a network "
                        "from finetune")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the local backbone weights file, when it moved since extraction")
    p.add_argument("--host", default=d.host,
                   help="address to listen on (default %(default)s: this machine only; another "
                        "address needs --token, or --allow-open)")
    p.add_argument("--port", type=int, default=d.port, help="TCP port (default %(default)s)")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' on /predict and /info (the page "
                        f"asks for it); default: ${TOKEN_ENV} if set. A flag is visible to other "
                        "users in the process list: prefer the variable")
    p.add_argument("--allow-open", action="store_true",
                   help="allow a non-loopback --host without a token (anyone who reaches it "
                        "can use the model)")
    p.add_argument("--top-k", type=int, default=d.top_k,
                   help="classes per image unless the request's ?top_k= says (default "
                        "%(default)s)")
    _add_batching(p, d)
    _add_limits(p, d)
    _add_scaling(p, d)
    return p


def _add_batching(p, d):
    g = p.add_argument_group("dynamic batching")
    g.add_argument("--max-batch", type=int, default=d.max_batch,
                   help="most images in one network call (default %(default)s; 1 turns "
                        "batching off: one call per image)")
    g.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long the first image of a batch waits for others, in ms "
                        "(default %(default)s); the added latency is at most this")
    g.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="images waiting for the network before new requests get 503 "
                        "(default %(default)s)")
    g.add_argument("--decode-threads", type=int, default=d.decode_threads,
                   help="threads decoding uploads (default 0: one per core)")


def _add_limits(p, d):
    g = p.add_argument_group("limits (refused with 413 before decoding)")
    g.add_argument("--max-body-mb", type=float, default=d.max_body_mb,
                   help="largest request body, in MiB (default %(default)s)")
    g.add_argument("--max-images", type=int, default=d.max_images,
                   help="most images in one request (default %(default)s)")
    g.add_argument("--max-megapixels", type=float, default=d.max_megapixels,
                   help="largest image by its declared width x height, in millions of pixels "
                        "(default %(default)s); an image bomb declares far more than it holds")


def _add_scaling(p, d):
    g = p.add_argument_group("scaling")
    g.add_argument("--workers", type=int, default=d.workers,
                   help="uvicorn worker processes on this machine, each with its own model, "
                        "batcher and share of the cores (default %(default)s: batching works "
                        "best with one process per few cores)")
    g.add_argument("--engine", choices=("local", "ray"), default=d.engine,
                   help="'local': uvicorn on this machine (default); 'ray': Ray Serve, for "
                        "several machines (pip install -e '.[ray]')")
    g.add_argument("--replicas", type=int, default=d.replicas,
                   help="Ray Serve replicas, one CPU each (default %(default)s; --engine ray)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (e.g. auto); default: start "
                        "a local Ray on this machine")


def check_flags(args) -> None:
    """Refuse what cannot serve before loading the model: values, the bind, the libraries."""
    from bottleneck.serve.options import TOKEN_ENV, is_loopback

    args.token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    _check_values(args)
    if args.token is not None and not args.token.strip():
        raise UserError("--token is empty: give a secret (or leave the flag and "
                        f"${TOKEN_ENV} out for no token)")
    if not is_loopback(args.host) and not args.token and not args.allow_open:
        raise UserError(f"--host {args.host} is reachable from other machines: add --token "
                        f"(or ${TOKEN_ENV}) to require a bearer token, or --allow-open to serve "
                        "without one")
    if not os.path.isfile(args.model):
        raise UserError(f"--model {args.model}: no such file")
    if os.path.splitext(args.model)[1].lower() not in (".joblib", ".keras"):
        raise UserError(f"--model {args.model}: expected a head or ensemble (.joblib) or a "
                        "fine-tuned network (.keras)")
    _check_libraries(args.engine)
    if args.engine == "local":
        _check_port_free(args.host, args.port)


def _check_values(args) -> None:
    rules = [("--top-k", args.top_k >= 1, "at least 1"), ("--max-batch", args.max_batch >= 1,
             "at least 1"), ("--max-wait-ms", args.max_wait_ms >= 0, "0 or more"),
             ("--max-queue", args.max_queue >= args.max_batch, "at least --max-batch"),
             ("--decode-threads", args.decode_threads >= 0, "0 (one per core) or more"),
             ("--max-body-mb", args.max_body_mb > 0, "above 0"),
             ("--max-images", args.max_images >= 1, "at least 1"),
             ("--max-megapixels", args.max_megapixels > 0, "above 0"),
             ("--workers", args.workers >= 1, "at least 1"),
             ("--replicas", args.replicas >= 1, "at least 1"),
             ("--port", 0 <= args.port <= 65535, "between 0 and 65535")]
    for flag, ok, want in rules:
        if not ok:
            raise UserError(f"{flag} must be {want}")
    if args.engine == "ray" and args.workers > 1:
        raise UserError("--workers is uvicorn's; on Ray Serve use --replicas")


def _check_libraries(engine: str) -> None:
    needed = ["fastapi", "uvicorn", "multipart"] + (["ray.serve"] if engine == "ray" else [])
    for name in needed:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            extra = "ray" if name.startswith("ray") else "serve"
            raise UserError(f"serve needs {name.replace('multipart', 'python-multipart')}, "
                            f"which is not installed: pip install -e '.[{extra}]'")


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another "
                            "--port, or stop what uses it") from None


def run(args, say):
    check_flags(args)
    from bottleneck.cli.common import options_from_args
    from bottleneck.serve.options import ServeOptions
    from bottleneck.serve.run import serve

    return serve(options_from_args(ServeOptions, args), say)

"""The FastAPI application: POST /predict, GET /health, GET /info and the page at `/`.

Every refusal is a 4xx (or 503 when the queue is full) with a one-line JSON body
{"error": "..."}; nothing a client sends can stop the process. `create_app` takes any
ServedModel, so uvicorn (model.LocalModel) and Ray Serve (ray_app) serve the same routes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from typing import Annotated

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from bottleneck.serve.limits import BadInput, BodyLimit, Busy
from bottleneck.serve.model import ServedModel
from bottleneck.serve.options import OPTIONS_ENV, ServeOptions

log = logging.getLogger("bottleneck.serve")
FIELD = "file"


def create_app(model: ServedModel) -> FastAPI:
    """The routes over a loaded model, with its limits and (optional) bearer token."""
    from bottleneck import __version__
    from bottleneck.serve.page import page_html

    options = model.options

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        model.close()   # the queued batches finish, then the inference thread stops

    app = FastAPI(title="bottleneck serve", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    _add_error_handlers(app)
    auth = [Depends(_token_check(options.token))]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return page_html(model.description, needs_token=bool(options.token))

    @app.get("/health")
    async def health():
        return model.health()

    @app.get("/info", dependencies=auth)
    async def info():
        return model.description

    @app.post("/predict", dependencies=auth)
    async def predict(file: Annotated[list[UploadFile], File(description="one image per field")],
                      top_k: Annotated[int | None, Query(ge=1, le=1000)] = None):
        uploads = [(f.filename or f"{FIELD} {i + 1}", await f.read()) for i, f in enumerate(file)]
        return {"model": os.path.basename(model.predictor.path),
                "predictions": await model.predict(uploads, top_k)}

    return app


def _token_check(token: str | None):
    """A dependency refusing requests without `Authorization: Bearer <token>` (when set)."""
    expected = f"Bearer {token}".encode() if token else None

    async def check(request: Request):
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            raise BadInput(401, "missing or wrong bearer token: send the header "
                                "'Authorization: Bearer <token>' (the server's --token)")

    return check


def _error(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BadInput)
    async def bad_input(request, exc: BadInput):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(Busy)
    async def busy(request, exc: Busy):
        return _error(503, f"busy: {exc}; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        return _error(422, validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        cause = exc.__cause__
        if isinstance(cause, BadInput):   # e.g. the body limit, hit while the form was parsed
            return _error(cause.status, cause.message)
        return _error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        log.exception("error while serving %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has details")


def validation_message(errors) -> str:
    """One line for FastAPI's validation errors, naming the multipart field the API expects."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query")]
        if loc[:1] == [FIELD] and err.get("type") == "missing":
            parts.append(f"no multipart field '{FIELD}': send each image as a field named "
                         f"'{FIELD}' (curl -F {FIELD}=@image.jpg)")
        elif loc[:1] == [FIELD]:
            parts.append(f"field '{FIELD}' must be an uploaded file (curl -F {FIELD}=@image.jpg)")
        else:
            parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def app_from_env() -> FastAPI:
    """uvicorn's factory in each worker process: the options from the parent, TensorFlow's
    threads divided between the workers, the model loaded once."""
    from bottleneck.serve.model import LocalModel

    options = ServeOptions.from_json(os.environ[OPTIONS_ENV])
    share_cores(options.workers)
    return create_app(LocalModel(options))


def share_cores(workers: int) -> None:
    """Give each of `workers` processes its share of the cores for TensorFlow's thread pools
    (called before TensorFlow runs anything)."""
    if workers <= 1:
        return
    from bottleneck.worker import usable_cores
    from features.tf import tf

    share = max(1, len(usable_cores()) // workers)
    tf.config.threading.set_intra_op_parallelism_threads(share)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, share // 2))

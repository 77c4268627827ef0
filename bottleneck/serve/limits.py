"""What the service refuses, before it costs memory: bodies over a size, batches over a count,
files that are not images, and images whose header declares more pixels than allowed (a small
file can declare 100,000 x 100,000 pixels: decoding it would take 30 GB). Each refusal is a
BadInput with an HTTP status and a one-line message."""

from __future__ import annotations

import io
import json
import re
import warnings

from bottleneck.data.images import NOT_AN_IMAGE


class BadInput(Exception):
    """A request the service refuses: `status` (4xx) and a one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Busy(Exception):
    """More images are waiting than --max-queue: the client should retry shortly (503)."""


def check_count(n: int, max_images: int) -> None:
    if n == 0:
        raise BadInput(422, "no image in the request: send each image as a multipart field "
                            "named 'file' (curl -F file=@image.jpg)")
    if n > max_images:
        raise BadInput(413, f"{n} images in one request, over the limit of {max_images} "
                            "(--max-images): split the batch")


def check_upload(data: bytes, max_pixels: int) -> None:
    """Refuse an upload that is empty, not an image, or declares too many pixels, from its
    header alone (Pillow reads the size without decoding)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadInput(422, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except UnidentifiedImageError:
        raise BadInput(415, NOT_AN_IMAGE) from None
    except Image.DecompressionBombError as exc:   # Pillow's own ceiling, far above ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        _refuse_pixels(int(found.group(1)) if found else max_pixels + 1, max_pixels)
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadInput(422, f"cannot decode: {first_line(exc)}") from None
    if width * height > max_pixels:
        _refuse_pixels(width * height, max_pixels, f"{width} x {height} pixels, ")


def _refuse_pixels(pixels: int, max_pixels: int, shape: str = "") -> None:
    mega = pixels / 1e6
    shown = f"{mega:,.0f}" if mega >= 10 else f"{mega:.3g}"
    raise BadInput(413, f"image declares {shape}{shown} megapixels, over the limit of "
                        f"{max_pixels / 1e6:g} (--max-megapixels)")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class BodyTooLarge(BadInput):
    """A body that passed --max-body-mb while it was read (a chunked upload)."""

    def __init__(self, size: int, max_bytes: int):
        super().__init__(413, body_message(size, max_bytes))


def body_message(size: int, max_bytes: int) -> str:
    return (f"request body of {size / 2**20:.1f} MB or more, over the limit of "
            f"{max_bytes / 2**20:g} MB (--max-body-mb)")


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 before it is read, by its declared
    Content-Length, or as soon as a chunked body passes the limit; nothing else is touched."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, int(declared))
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(seen, self.max_bytes)
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:   # else the application already answered (its handlers map it)
                await self._refuse(send, seen)

    async def _refuse(self, send, size: int):
        body = json.dumps({"error": body_message(size, self.max_bytes)}, separators=(",", ":"))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body.encode()})

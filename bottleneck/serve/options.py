"""The settings of a served model, one typed record: read from the flags, sent to uvicorn's
worker processes as JSON, and reported by GET /info."""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import asdict, dataclass, fields

TOKEN_ENV = "BOTTLENECK_SERVE_TOKEN"      # where --token is read from when not on the command line
OPTIONS_ENV = "BOTTLENECK_SERVE_OPTIONS"  # how uvicorn's worker processes receive the options


@dataclass(frozen=True)
class ServeOptions:
    model: str
    weights: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    top_k: int = 3
    max_batch: int = 32            # images per network call
    max_wait_ms: float = 5.0       # how long the first image of a batch waits for company
    max_queue: int = 512           # images waiting before new requests get 503
    workers: int = 1               # uvicorn processes, each with its own model and batcher
    decode_threads: int = 0        # 0: one per core
    token: str | None = None
    allow_open: bool = False       # bind a non-loopback address without a token
    max_body_mb: float = 32.0
    max_images: int = 32           # images per request
    max_megapixels: float = 40.0   # declared width x height of one image
    engine: str = "local"          # uvicorn on this machine, or "ray" (Ray Serve)
    replicas: int = 1              # Ray Serve replicas
    address: str | None = None

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    def public(self) -> dict:
        """What GET /info shows of the settings (never the token)."""
        shown = asdict(self)
        shown["token"] = bool(self.token)
        shown.pop("weights", None)
        return shown


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (socket.gaierror, ValueError):
            return False

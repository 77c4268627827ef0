"""The one way this project writes a file: to a temporary name beside it, then an atomic rename.

A kill at any moment leaves either the old file or the new one under the final name, never half of
one; the temporary file of an interrupted write is removed when the writer raises.
"""

from __future__ import annotations

import contextlib
import os


def temporary_name(path: str) -> str:
    """Where `path` is written before the rename: same folder, same extension (savers such as
    Keras' `model.save` check it), marked `.tmp`."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.tmp{ext}" if ext else f"{path}.tmp"


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)


def write_json(path: str, data, **kwargs) -> None:
    """Write `data` as JSON to `path` atomically (kwargs go to json.dump)."""
    import json

    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(data, handle, **kwargs)

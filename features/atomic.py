"""The one way this project writes a file: to a temporary name beside it, then an atomic rename.

A kill at any moment leaves either the old file or the new one under the final name, never half of
one; the temporary file of an interrupted write is removed when the writer raises.
"""

from __future__ import annotations

import contextlib
import os


def temporary_name(path: str) -> str:
    """Where `path` is written before the rename: same folder, a hidden name (no listing or glob
    of the folder mistakes it for a finished file), same extension (savers such as Keras'
    `model.save` check it), marked `.tmp`."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.tmp{ext}" if ext else f".{name}.tmp")


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    tmp = temporary_name(path)
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)   # left by a writer that was killed (SIGKILL cannot clean up; we can)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def check_writable(path: str, flag: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot be written: a folder, under a file,
    or in a folder this process may not write (creating the folder if it is missing)."""
    from features.errors import UserError

    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name (in it, or elsewhere)")
    parent = os.path.dirname(os.path.abspath(path))
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{flag} {path}: {probe} is a file, not a folder; pick another {flag}")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder {parent} ({exc.strerror}); pass {flag} in a "
                        "folder you can write") from exc
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write in {parent}; pass {flag} in a folder you can write")


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)


def write_json(path: str, data, **kwargs) -> None:
    """Write `data` as JSON to `path` atomically (kwargs go to json.dump)."""
    import json

    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(data, handle, **kwargs)

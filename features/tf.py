"""TensorFlow and Keras, imported on first use and without their C++ start-up chatter.

`from features.tf import keras, tf` is the one way this project imports them. Nothing is imported
until a name is asked for (a PEP 562 module `__getattr__`), so a module that needs TensorFlow only
inside a function costs nothing at start-up. TensorFlow's native logging starts before
TF_CPP_MIN_LOG_LEVEL is read, so the import runs with file descriptor 2 pointed at /dev/null;
Python exceptions from the import still propagate.
"""

from __future__ import annotations

import os
import time

_loaded: dict = {}
_import_seconds: list[float] = []


def _import_quietly() -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    started = time.perf_counter()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras
        import tensorflow

        for gpu in tensorflow.config.list_physical_devices("GPU"):  # runs the CUDA probe now
            # take GPU memory as needed, not all of it at start: the parent of extraction's
            # workers, and featurizer actors sharing a GPU, must leave room for each other
            tensorflow.config.experimental.set_memory_growth(gpu, True)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    _import_seconds.append(time.perf_counter() - started)
    return {"keras": keras, "tf": tensorflow}


def import_seconds() -> float:
    """Seconds this process spent importing TensorFlow and Keras here (0.0 before, or when they
    were imported elsewhere first): `extract --json` reports it as a phase of its start-up."""
    return sum(_import_seconds)


def __getattr__(name: str):
    if name not in ("keras", "tf"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _loaded:
        _loaded.update(_import_quietly())
    return _loaded[name]

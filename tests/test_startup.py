"""Start-up: help, info, backbones, the linear and kNN fit commands never import TensorFlow
(nor faiss or cleanlab, the audit extra: the --help probes check sklearn, which both import).

Each command runs in a fresh interpreter that reports whether `tensorflow` got imported; no
timing here (timings live in bench/startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import ROOT, blobs, write_synthetic_cache

PROBE = """
import json, sys
sys.argv = ["cli.py"] + {argv!r}
from bottleneck.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:   # --help exits
    code = exc.code
print(json.dumps({{"code": code, "tf": "tensorflow" in sys.modules,
                   "sklearn": "sklearn" in sys.modules,
                   "server": sorted(m for m in ("fastapi", "uvicorn", "starlette", "ray.serve")
                                    if m in sys.modules)}}), file=sys.stderr)
"""


def imports_of(*argv) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv))], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["extract", "--help"], ["fit-svm", "--help"],
                                  ["finetune", "--help"], ["serve", "--help"], ["backbones"],
                                  ["audit", "--help"], ["similar", "--help"],
                                  ["fit-knn", "--help"]])
def test_help_and_backbones_import_no_tensorflow(argv):
    """...nor the web server's libraries (only `serve` itself loads them)."""
    seen = imports_of(*argv)
    assert seen["code"] == 0 and not seen["tf"] and not seen["server"], seen
    if argv[-1] == "--help":
        assert not seen["sklearn"], seen   # the parsers read constants only


def test_info_and_linear_fits_import_no_tensorflow(tmp_path):
    X, y = blobs(n_per_class=12, k=3, d=6)
    cache = write_synthetic_cache(tmp_path / "c.h5", {"a": X}, y, ["p", "q", "r"])
    assert imports_of("info", cache) == {"code": 0, "tf": False, "sklearn": False, "server": []}
    for command in ("fit-svm", "fit-logistic", "fit-knn"):
        seen = imports_of(command, "--features", cache, "--out", str(tmp_path / "h.joblib"))
        assert seen["code"] == 0 and not seen["tf"] and not seen["server"], (command, seen)


def test_top_level_help_imports_no_h5py():
    """`--help` builds every parser: none of them may pull in the HDF5 cache reader."""
    probe = ("import sys\nfrom bottleneck.cli import main\ntry:\n    main(['--help'])\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in ('h5py',) if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr

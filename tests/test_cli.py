"""The command line as a user meets it: JSON output, one-line errors, kill -9 and resume."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from features.cache.store import Cache

from .helpers import ROOT, run_cli, run_cli_here

BASE = ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32"]


def test_extract_json_info_and_layers(tiny_folder, tmp_path):
    out = tmp_path / "f.h5"
    proc = run_cli("extract", "--data", tiny_folder, *BASE, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["n_images"] == 24 and summary["features"] == {"conv_pw_13_relu": [256]}
    assert {"images_per_second", "seconds", "file_mb", "n_skipped"} <= set(summary)

    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["n_images"] == 24 and info["backbone"] == "mobilenet" and info["alpha"] == 0.25
    human = run_cli("info", out)
    assert "conv_pw_13_relu: 24 x 256" in human.stdout

    layers = json.loads(run_cli("layers", "--backbone", "vgg16", "--image-size", "64",
                                "--json").stdout)
    assert layers["default"] == "block5_pool"
    names = {r["name"]: r["shape"] for r in layers["layers"]}
    assert names["block5_pool"] == [2, 2, 512] and names["block3_conv3"] == [16, 16, 256]


def test_errors_are_one_line_with_a_fix(tiny_folder, tmp_path, capsys):
    """In this process (one TensorFlow import for all cases, not six); one-line errors of a real
    `python cli.py` process are checked in test_grow, test_audit, test_similar and test_sweep."""
    cases = [
        (["extract", "--data", tmp_path / "missing", *BASE], "is not a folder"),
        (["extract", "--data", tiny_folder, *BASE, "--layer", "conv_pw_13_reluu"],
         "Closest: conv_pw_13_relu"),
        (["extract", "--data", tiny_folder, "--backbone", "resnet5O"], "Did you mean"),
        (["extract", "--data", tiny_folder, *BASE, "--weights", tmp_path / "nope.h5"],
         "no such file"),
        (["extract", "--data", tiny_folder, "--pool", "mean"], "invalid choice"),
        (["info", tmp_path / "nothing.h5"], "no feature cache"),
    ]
    for args, message in cases:
        code, _, err = run_cli_here(capsys, *args)
        assert code == 2, (args, err)
        lines = [l for l in err.strip().splitlines() if l.strip()]
        assert len(lines) == 1 and message in lines[0], (args, err)
        assert "Traceback" not in err


def test_kill_9_then_rerun_resumes(tiny_folder, tmp_path):
    out = tmp_path / "f.h5"
    args = [sys.executable, os.path.join(ROOT, "cli.py"), "extract", "--data", tiny_folder, *BASE,
            "--out", str(out), "--batch-size", "2", "--image-size", "96"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(glob.glob(str(out) + ".partial/upto_*.npz")) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(glob.glob(str(out) + ".partial/upto_*.npz"))
    assert 3 <= done < 12, "the run finished before it could be killed"
    assert not out.exists()
    rerun = run_cli("extract", "--data", tiny_folder, *BASE, "--out", out, "--batch-size", "2",
                    "--image-size", "96", "--json")
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["resumed"] and summary["n_computed"] <= 24 - 2 * 3
    whole = run_cli("extract", "--data", tiny_folder, *BASE, "--out", tmp_path / "w.h5",
                    "--batch-size", "2", "--image-size", "96")
    assert whole.returncode == 0
    with Cache(str(out)) as a, Cache(str(tmp_path / "w.h5")) as b:
        assert a.paths == b.paths
        np.testing.assert_array_equal(a.features(a.layers[0]), b.features(b.layers[0]))


@pytest.mark.parametrize("after", [0.3, 1.5])
def test_ctrl_c_while_importing_is_one_line(tmp_path, after):
    """Ctrl-C in the first seconds (Python still importing TensorFlow) printed a traceback."""
    import signal as sig

    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py"), "layers",
                             "--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none"],
                            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(after)
    proc.send_signal(sig.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the command finished before the signal")
    assert proc.returncode == 130 and "Traceback" not in err, err[-1500:]
    assert err.strip().splitlines()[-1].startswith("interrupted")

"""Start-up time of the command line against `import tensorflow`, measured in the same run.

    python bench/startup.py [--repeat 5]

Whole-process wall time (best of --repeat) of `python cli.py --help`, `python cli.py fit-svm
--help`, `python cli.py backbones` and `python cli.py info CACHE.h5` (a small cache written here),
next to `python -c "import tensorflow"`; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def best_of(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return round(min(times), 3)


def small_cache(folder: str) -> str:
    import numpy as np

    from tests.helpers import write_synthetic_cache

    rng = np.random.default_rng(0)
    return write_synthetic_cache(os.path.join(folder, "c.h5"), {"a": rng.normal(size=(60, 8))},
                                 np.repeat(np.arange(3), 20), ["p", "q", "r"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    py, cli = sys.executable, os.path.join(ROOT, "cli.py")
    with tempfile.TemporaryDirectory() as folder:
        cache = small_cache(folder)
        commands = {"cli.py --help": [py, cli, "--help"],
                    "cli.py fit-svm --help": [py, cli, "fit-svm", "--help"],
                    "cli.py backbones": [py, cli, "backbones"],
                    "cli.py info CACHE.h5": [py, cli, "info", cache],
                    "python -c 'import tensorflow'": [py, "-c", "import tensorflow"]}
        seconds = {name: best_of(cmd, args.repeat) for name, cmd in commands.items()}
    tf = seconds["python -c 'import tensorflow'"]
    print(json.dumps({"seconds": seconds, "target_s": 1.5,
                      "ratio_to_import_tensorflow": {k: round(v / tf, 3)
                                                     for k, v in seconds.items()}}, indent=1))


if __name__ == "__main__":
    main()

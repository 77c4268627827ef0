"""Library versions recorded in every cache and head, so provenance is explicit.

Read from the installed distributions' metadata (so recording them imports nothing heavy), or
from an imported module's `__version__` when its distribution goes by another name (for example
tensorflow-cpu, or this project run from a checkout that was never pip-installed).
"""

import sys
from importlib import metadata

# name recorded: (distribution, module)
LIBRARIES = {"bottleneck": ("bottleneck-transfer", "bottleneck"),
             "tensorflow": ("tensorflow", "tensorflow"), "keras": ("keras", "keras"),
             "numpy": ("numpy", "numpy"), "h5py": ("h5py", "h5py"),
             "scikit-learn": ("scikit-learn", "sklearn")}


def library_versions() -> dict:
    out = {}
    for name, (dist, module) in LIBRARIES.items():
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = getattr(sys.modules.get(module), "__version__", "unknown")
    return out

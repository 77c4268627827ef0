"""The one reader of pickled model files (head and ensemble .joblib), whatever version wrote them.

A pickle names each class by the module it was defined in when the file was written (for example
`features.estimators.TemperedLinearSVC`). When a module moves, files written before would no
longer load; `MOVED` records every move, and `load_pickled` lets a pickle find an old module name
for the time of one load (a stand-in module whose attributes are the new module's), so old files
load as the classes of today and are written under the new names when saved again. Outside a load
the old names do not exist: code must import the new ones.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types

# old module -> where it lives now (features/ was one flat folder until the sub-packages)
MOVED = {
    "features.store": "features.cache.store", "features.journal": "features.cache.journal",
    "features.grow": "features.cache.grow", "features.split": "features.cache.split",
    "features.provenance": "features.cache.provenance",
    "features.versions": "features.cache.versions",
    "features.split_record": "features.cache.split_record",
    "features.heads": "features.heads.kinds", "features.estimators": "features.heads.estimators",
    "features.solvers": "features.heads.solvers", "features.search": "features.heads.search",
    "features.fitting": "features.heads.run", "features.mlp": "features.heads.mlp",
    "features.outofcore": "features.heads.outofcore", "features.probe": "features.heads.probe",
    "features.spec": "features.heads.layer_spec", "features.headfile": "features.heads.headfile",
    "features.report": "features.reports.metrics", "features.mistakes": "features.reports.mistakes",
    "features.leaderboard": "features.reports.leaderboard",
    "features.ensemble": "features.ensembles.combination",
    "features.ensembling": "features.ensembles.run",
}
_LOCK = threading.Lock()


class _StandIn(types.ModuleType):
    """An old module name: every attribute is read from the module that now holds it, imported
    on first use (so a load imports only the modules its pickle names)."""

    def __init__(self, old: str, new: str):
        super().__init__(old)
        self.__moved_to__ = new

    def __getattr__(self, name: str):
        return getattr(importlib.import_module(self.__moved_to__), name)


def _is_package(name: str) -> bool:
    """Whether an old module name is now a package (features.heads): that name stays the
    package's, never a stand-in, or its own modules could not be imported during a load."""
    return any(new.startswith(name + ".") for new in MOVED.values())


def load_pickled(path: str):
    """joblib.load(path), with the modules of MOVED findable under their old names meanwhile.

    joblib/pickle executes code on load: only load files you trust."""
    import joblib

    with _LOCK:
        added = {old: _StandIn(old, new) for old, new in MOVED.items() if not _is_package(old)}
        sys.modules.update(added)
        try:
            return joblib.load(path)
        finally:
            for old, stand_in in added.items():
                if sys.modules.get(old) is stand_in:
                    del sys.modules[old]

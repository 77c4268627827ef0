"""Where a run's seconds go: one wall-clock timer per phase, reported by `extract --json`.

A phase is timed with `with phases.phase("name"):`; a phase entered twice adds up. The seconds
before the run started (the interpreter, the command line's imports) are read off the process's
own start time, so `extract --json` says how long the whole process took to reach each point.
Importing this module imports nothing heavy.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Phases:
    """Seconds per named phase, in the order the phases were first entered."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        """Time the `with` block under `name` (added to any earlier time of that phase)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` (measured elsewhere, e.g. inside a worker loop) under `name`."""
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    def to_json(self) -> dict[str, float]:
        """The phases, rounded to milliseconds."""
        return {name: round(value, 3) for name, value in self.seconds.items()}


def since_process_start() -> float | None:
    """Seconds since this process was started (exec), from /proc; None where there is none.

    This counts the interpreter's own start and every import before the caller, which no timer
    inside the program can see."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")   # field 22: starttime, in ticks
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return None

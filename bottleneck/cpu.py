"""The CPU this process runs on, as /proc/cpuinfo names it: its model and its flags.

The one reader of /proc/cpuinfo: the precision probe keys its remembered decisions by it, and the
benches print it beside every figure. Reads /proc only; imports nothing heavy.
"""

from __future__ import annotations


def cpu_info() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU ('unknown' and no flags where /proc is absent)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if model != "unknown" and flags:
                    break
    except OSError:
        pass
    return model, flags

"""The machine a figure was taken on: CPU model, the flags that decide bf16's speed, the load.

Every bench figure of stage 1 is printed with `machine()` beside it, because the project's
machines change from session to session and a ratio means nothing without the CPU it came from.
Reads /proc only; imports nothing heavy.
"""

from __future__ import annotations

import os

from bottleneck.cpu import cpu_info


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages and running/total tasks (/proc/loadavg)."""
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:4])
    except OSError:
        return "unknown"


def machine() -> dict:
    """CPU model, usable cores, the AMX / AVX-512 / AVX-512 BF16 flags, and the load now."""
    model, flags = cpu_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores,
            "amx": sorted(f for f in flags if f.startswith("amx")) or False,
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "loadavg": loadavg()}

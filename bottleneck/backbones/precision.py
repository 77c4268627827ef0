"""`--precision auto`: pick the compute precision by measuring it on this machine, never by name.

bfloat16 is faster than float32 only where the hardware multiplies bf16 natively at a higher rate
(AMX tiles, some GPUs); on a CPU with AVX-512 BF16 but no AMX it measured 0.5-0.9x float32, and
float32 also gets BatchNorm folded into the convolutions. So the choice is a short probe in two
steps, each timed best-of-a-few on the machine now:

1. kernels: one 3x3 convolution of a typical mid-network shape in float32 and in the candidate
   precision (a fraction of a second). A candidate whose kernels are not clearly faster is out.
2. the model: only for a candidate that passed step 1, a few batches through the real feature
   network in both precisions (the casts and unfused layers of mixed precision included).

The candidate is picked only where step 2 measured it faster; the decision, the ratios measured
and why are returned as a `PrecisionChoice` for the log line, `--json` and the cache's record.
The choice logic takes the timings as a function, so tests drive it with a fake clock.

A decision is remembered per machine and network (the CPU model and flags, TensorFlow's version,
the GPUs, the backbone, width, size, taps and pooling) in `$XDG_CACHE_HOME/bottleneck/
precision.json`, so only the first run on a machine pays the probe (about 0.3 s, plus a second
network build and a few batches when the kernels look faster); another machine probes anew.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

KERNEL_MARGIN = 1.15   # kernels must be this much faster before the model is probed at all
MODEL_MARGIN = 1.2     # the model must be this much faster to switch from float32 (and its
#                        BatchNorm folding): a margin well above the probe's noise


@dataclass(frozen=True)
class PrecisionChoice:
    """What --precision decided: the precision used, and the measurements behind it."""

    asked: str                          # 'auto' or an explicit precision
    used: str                           # the precision the forward pass runs in
    how: str                            # 'asked', 'probe', or 'existing cache'
    candidate: str | None = None        # the faster-looking precision the probe tried
    kernel_speedup: float | None = None  # candidate's conv kernels: speed / float32 speed
    model_speedup: float | None = None   # candidate's feature network: speed / float32 speed
    probe_seconds: float | None = None
    measured_at: str | None = None      # when the probe ran (an earlier run, when remembered)

    def to_json(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def sentence(self) -> str:
        """One line for the log: which precision, and the measured ratio that chose it."""
        if not self.how.startswith("probe"):
            return f"precision: {self.used} ({self.how})"
        measured = [f"{name} {value:.2f}x float32" for name, value in
                    (("kernels", self.kernel_speedup), ("network", self.model_speedup))
                    if value is not None]
        when = "" if self.how == "probe" else f", remembered from {self.measured_at}"
        return (f"precision: {self.used} (auto: {self.candidate} measured "
                f"{', '.join(measured)} on this machine{when})")


def best_seconds(fn: Callable[[], object], reps: int = 3,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """The best wall time of `reps` calls of `fn` after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        started = clock()
        fn()
        best = min(best, clock() - started)
    return max(best, 1e-9)


def choose_precision(candidate: str, kernel_seconds: Callable[[str], float],
                     model_seconds: Callable[[str], float],
                     clock: Callable[[], float] = time.perf_counter) -> PrecisionChoice:
    """float32 or `candidate`, by the two-step probe. `kernel_seconds(p)` and `model_seconds(p)`
    return seconds for the same work in precision p; the model is probed only when the kernels
    are at least KERNEL_MARGIN faster, and the candidate is used only when the model is at least
    MODEL_MARGIN faster."""
    started = clock()
    kernel = kernel_seconds("float32") / kernel_seconds(candidate)
    model = None
    if kernel >= KERNEL_MARGIN:
        model = model_seconds("float32") / model_seconds(candidate)
    used = candidate if model is not None and model >= MODEL_MARGIN else "float32"
    return PrecisionChoice("auto", used, "probe", candidate, kernel, model, clock() - started,
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def remembered(key: dict, probe: Callable[[], PrecisionChoice],
               path: str | None = None) -> PrecisionChoice:
    """The decision stored for `key` on this machine, else `probe()`'s, stored for next time
    (a store that cannot be read or written only means probing again)."""
    path = path or decisions_path()
    name = json.dumps(key, sort_keys=True)
    try:
        with open(path) as handle:
            stored = json.load(handle).get(name)
        if stored:
            return replace(PrecisionChoice(**stored), how="probe, remembered")
    except (OSError, ValueError, TypeError):
        pass
    choice = probe()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path) as handle:
                table = json.load(handle)
        except (OSError, ValueError):
            table = {}
        table[name] = asdict(choice)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as handle:
            json.dump(table, handle, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
    return choice


def decisions_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bottleneck", "precision.json")


def machine_key() -> dict:
    """What a decision depends on besides the network: the CPU, its relevant flags, TF."""
    from bottleneck.cpu import cpu_info
    from bottleneck.worker import usable_cores
    from features.tf import tf

    model, flags = cpu_info()
    wanted = sorted(f for f in flags if f.startswith(("amx", "avx512")) or f in ("avx2", "fma"))
    return {"cpu": model, "flags": wanted, "cores": len(usable_cores()), "tf": tf.__version__}


def candidate_precision(gpus: int) -> str:
    """The reduced precision worth probing: float16 on a GPU, bfloat16 on a CPU."""
    return "float16" if gpus else "bfloat16"


def conv_kernel_seconds(precision: str, reps: int = 3) -> float:
    """Best time of one 3x3 convolution, 8 x 56 x 56 x 64 -> 64 channels, in `precision`."""
    from features.tf import tf

    x = tf.cast(tf.random.stateless_uniform((8, 56, 56, 64), (0, 1)), precision)
    k = tf.cast(tf.random.stateless_uniform((3, 3, 64, 64), (0, 2)) * 0.05, precision)
    conv = tf.function(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"))
    return best_seconds(lambda: conv(x, k).numpy(), reps)


def forward_seconds(forward, image_size: int, batch: int, reps: int = 2) -> float:
    """Best time of `forward` over one batch of random pixels."""
    from features.tf import tf

    x = tf.random.stateless_uniform((batch, image_size, image_size, 3), (0, 3), 0.0, 255.0)
    return best_seconds(lambda: [t.numpy() for t in forward(x)], reps)

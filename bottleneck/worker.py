"""One extraction worker process per device: the devices of this machine, and the workers' loop.

A worker is a fresh (spawned) process that sees one GPU (CUDA_VISIBLE_DEVICES, set before it
imports TensorFlow) or, on a machine without GPUs, is pinned to its own CPU cores; it rebuilds the
network from the journal's provenance, takes shards from a queue and journals their batches.
A killed worker loses at most the batch it was computing: the finished batches are in the journal.
Importing this module imports no TensorFlow (the device must be chosen before the import).
"""

from __future__ import annotations

import os
import queue as queue_mod
import time
from dataclasses import dataclass

from features.cache.journal import Journal, Shard
from features.errors import UserError


@dataclass(frozen=True)
class Device:
    """Where one worker runs: a GPU by index, or a set of CPU cores."""

    kind: str                  # 'GPU' or 'CPU'
    index: int                 # GPU index, or the CPU worker's number
    cores: tuple[int, ...]     # CPU cores the worker is pinned to (its decoding runs there too)

    def __str__(self) -> str:
        cores = f"cores {','.join(map(str, self.cores))}"
        return f"GPU {self.index} ({cores})" if self.kind == "GPU" else f"CPU worker {self.index} " \
            f"({cores})"


def usable_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
        range(os.cpu_count() or 1))


def count_gpus() -> int:
    """GPUs TensorFlow sees (0 on a CPU-only install)."""
    from features.tf import tf

    return len(tf.config.list_physical_devices("GPU"))


def pick_devices(spec: str | None, gpus: int, cores: list[int]) -> list[Device]:
    """The workers for `--devices N|all` (default all): every GPU, else one CPU worker (as a
    one-device run always was) or N CPU workers pinned to their own share of the cores."""
    if spec in (None, "", "all"):
        count = gpus or 1
    elif str(spec).isdigit() and int(spec) >= 1:
        count = int(spec)
    else:
        raise UserError(f"--devices {spec!r}: give a number of devices (1, 2, ...) or 'all'")
    limit, what = (gpus, f"{gpus} GPU(s)") if gpus else (
        len(cores), f"no GPU and {len(cores)} usable CPU core(s), one CPU worker per core at most")
    if count > limit:
        raise UserError(f"--devices {spec}: this machine has {what}; pass --devices {limit} "
                        "or all")
    share = [tuple(cores[i::count]) for i in range(count)]
    return [Device("GPU" if gpus else "CPU", i, share[i]) for i in range(count)]


def enter_device(device: Device) -> None:
    """Make this fresh process use only `device`; call before TensorFlow is imported. TensorFlow
    sizes its thread pools (and tf.data its decoding threads) from the cores pinned here."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(device.index) if device.kind == "GPU" else ""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, device.cores)


def worker_main(device: Device, settings, shards, events) -> None:
    """A worker's whole life: enter the device, build the network once, compute shards from the
    `shards` queue until it is empty, reporting ('batch', device index, images) on `events`."""
    enter_device(device)
    from bottleneck.backbones.network import compiled_forward, feature_model_from_provenance
    from bottleneck.shards import BatchRunner, run_shard

    journal = Journal(settings.out)
    journal.load_plan()
    model, _ = feature_model_from_provenance(journal.provenance(), fold_bn=True)
    runner = BatchRunner(settings, journal, compiled_forward(model), 0,
                         say=lambda line: events.put(("say", device.index, line)))
    sent = [0]

    def batch_done(covered: int) -> None:   # images covered (bar), and computed (the count)
        events.put(("batch", device.index, (covered, runner.computed - sent[0])))
        sent[0] = runner.computed

    try:
        while True:
            try:
                start, stop = shards.get_nowait()
            except queue_mod.Empty:
                break
            run_shard(runner, Shard(start, stop), batch_done)
    finally:
        runner.close()


@dataclass
class WorkerRun:
    """What the worker processes did: images computed, steady img/s once all had warmed up."""

    computed: int = 0
    steady: float | None = None


def run_workers(devices: list[Device], settings, shards: list[Shard], on_batch, say) -> WorkerRun:
    """Compute `shards` on one spawned process per device. If a worker dies, the others are
    stopped and the run fails with how to resume; finished batches stay in the journal."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")   # never fork a process that has TensorFlow loaded
    todo, events = ctx.Queue(), ctx.Queue()
    for shard in shards:
        todo.put((shard.start, shard.stop))
    procs = [ctx.Process(target=worker_main, args=(d, settings, todo, events), daemon=True,
                         name=f"extract-{d.kind}{d.index}") for d in devices]
    for device, proc in zip(devices, procs):
        _start_on(device, proc)
    try:
        return _watch(procs, devices, events, on_batch, say)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


def _start_on(device: Device, proc) -> None:
    """Start `proc` with the device's environment and cores already in place: a spawned child
    re-imports the caller's main module (which may import TensorFlow) before worker_main runs."""
    saved_env, saved_cores = os.environ.get("CUDA_VISIBLE_DEVICES"), usable_cores()
    os.environ["CUDA_VISIBLE_DEVICES"] = str(device.index) if device.kind == "GPU" else ""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, device.cores)
    try:
        proc.start()
    finally:
        if saved_env is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved_env
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, saved_cores)


def _watch(procs, devices, events, on_batch, say) -> WorkerRun:
    """Relay workers' progress until all exit; a worker that dies stops the run at once. The
    steady rate is the sum of each worker's own rate after its first batch (start-up excluded)."""
    run, spans = WorkerRun(), {}
    while True:
        _raise_if_failed(procs, devices)
        try:
            kind, index, value = events.get(timeout=0.2)
        except queue_mod.Empty:
            if all(p.exitcode == 0 for p in procs) and events.empty():
                break
            continue
        if kind == "say":
            say(value)
            continue
        run.computed += value[1]
        on_batch(value[0])
        now = time.perf_counter()
        first, images, _ = spans.get(index, (now, -value[1], now))
        spans[index] = (first, images + value[1], now)
    rates = [n / (last - first) for first, n, last in spans.values() if last > first and n > 0]
    run.steady = sum(rates) if rates else None
    return run


def _raise_if_failed(procs, devices) -> None:
    """A worker that exited with an error (or was killed) fails the run, saying how to resume."""
    for device, proc in zip(devices, procs):
        if proc.exitcode not in (None, 0):
            raise UserError(f"the worker on {device} stopped (exit code {proc.exitcode}); re-run "
                            "the same command to resume: its finished batches are kept")

"""extract --precision auto: the probe's choice logic (fake timings), its memory per machine,
and the phases `extract --json` reports."""

from __future__ import annotations

import json

from bottleneck.backbones import precision as probe
from bottleneck.phases import Phases

from .helpers import extract


def fake(seconds: dict):
    """A timing function: seconds per precision, counting how often each was measured."""
    calls = []

    def measure(p):
        calls.append(p)
        return seconds[p]
    return measure, calls


def test_candidate_used_only_when_the_network_measures_faster():
    kernels, _ = fake({"float32": 2.0, "bfloat16": 1.0})        # kernels 2x faster
    model, _ = fake({"float32": 1.0, "bfloat16": 0.5})          # network 2x faster
    choice = probe.choose_precision("bfloat16", kernels, model)
    assert (choice.used, choice.kernel_speedup, choice.model_speedup) == ("bfloat16", 2.0, 2.0)
    assert "bfloat16 measured kernels 2.00x float32, network 2.00x float32" in choice.sentence()


def test_fast_kernels_but_slower_network_keep_float32():
    kernels, _ = fake({"float32": 2.0, "bfloat16": 1.0})
    model, _ = fake({"float32": 1.0, "bfloat16": 2.5})          # e.g. MobileNet: BN not folded
    choice = probe.choose_precision("bfloat16", kernels, model)
    assert choice.used == "float32" and choice.model_speedup == 0.4


def test_slow_kernels_skip_the_network_probe():
    kernels, _ = fake({"float32": 1.0, "bfloat16": 1.8})        # AVX-512 BF16 without AMX
    model, calls = fake({"float32": 1.0, "bfloat16": 0.1})
    choice = probe.choose_precision("bfloat16", kernels, model)
    assert choice.used == "float32" and choice.model_speedup is None and calls == []
    assert "kernels 0.56x float32" in choice.sentence()


def test_a_gain_within_the_margin_keeps_float32():
    kernels, _ = fake({"float32": 2.0, "bfloat16": 1.0})
    model, _ = fake({"float32": 1.1, "bfloat16": 1.0})          # 1.1x: below MODEL_MARGIN
    assert probe.choose_precision("bfloat16", kernels, model).used == "float32"


def test_best_seconds_takes_the_fastest_call_after_a_warm_up():
    ticks = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])   # calls of 5, 1 and 3 s
    calls = []
    best = probe.best_seconds(lambda: calls.append(1), reps=3, clock=lambda: next(ticks))
    assert best == 1.0 and len(calls) == 4


def test_decision_is_remembered_per_key(tmp_path):
    store = str(tmp_path / "precision.json")
    runs = []

    def run():
        runs.append(1)
        return probe.PrecisionChoice("auto", "float32", "probe", "bfloat16", 0.5, None, 0.2)

    first = probe.remembered({"cpu": "A"}, run, store)
    again = probe.remembered({"cpu": "A"}, run, store)
    other = probe.remembered({"cpu": "B"}, run, store)
    assert len(runs) == 2 and first.how == "probe" and again.how == "probe, remembered"
    assert again.kernel_speedup == 0.5 and other.how == "probe"
    assert len(json.load(open(store))) == 2


def test_phases_add_up():
    phases = Phases()
    phases.add("a", 1.0)
    phases.add("a", 0.5)
    with phases.phase("b"):
        pass
    assert phases.seconds["a"] == 1.5 and list(phases.to_json()) == ["a", "b"]


def test_json_reports_precision_and_phases(tiny_folder, tmp_path):
    result = extract(tiny_folder, tmp_path / "f.h5", precision="auto")
    choice = result["precision"]
    assert choice["asked"] == "auto" and choice["used"] in ("float32", "bfloat16")
    phases = result["phases"]
    for name in ("scan_and_split", "build_model", "precision_probe", "first_batch", "steady",
                 "write"):
        assert name in phases and phases[name] >= 0
    inside = sum(v for k, v in phases.items() if k != "process_start_to_run")
    assert inside <= result["seconds"] + 0.05          # the run's phases fit in its seconds
    assert inside >= 0.5 * result["seconds"]           # and account for most of them
    from features.cache.store import Cache
    with Cache(result["path"]) as cache:
        assert cache.provenance().precision == choice["used"]
    again = extract(tiny_folder, tmp_path / "f.h5", precision="auto")
    assert again["already_complete"] and again["precision"]["how"].startswith("kept")

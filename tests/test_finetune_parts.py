"""The fine-tuning parts alone, in milliseconds: options, the unfreeze rule, the callbacks.

A Trainer is driven on a tiny Dense network (no images, no backbone), so each callback's effect
on the run's state and files is asserted directly.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from bottleneck.data.augment import AugmentOptions
from bottleneck.finetune.options import CheckpointPaths, FinetuneOptions
from bottleneck.finetune.training import (
    LOG_FIELDS,
    Callback,
    CsvLog,
    Data,
    EarlyStopping,
    TimeBudget,
    Trainer,
    TrainState,
)
from features.errors import UserError
from features.tf import keras, tf


@pytest.mark.parametrize("kwargs,flag", [
    ({"epochs": 0}, "--epochs 0"), ({"batch_size": 0}, "--batch-size 0"),
    ({"lr_schedule": "linear"}, "--lr-schedule 'linear'"), ({"optimizer": "rmsprop"}, "rmsprop"),
    ({"label_smoothing": 1.0}, "--label-smoothing 1.0"), ({"head_init": "zeros"}, "zeros"),
    ({"average_last": 3, "epochs": 2}, "--average-last 3"), ({"patience": 0}, "--patience 0"),
    ({"time_budget": 0}, "--time-budget 0"), ({"class_weight": "inverse"}, "inverse"),
    ({"warmup_lr": 0.0}, "--warmup-lr 0.0"), ({"lr": -1.0}, "--lr -1.0"),
    ({"check_samples": -1}, "--check-samples -1"), ({"block_lr_decay": 0.0}, "--block-lr-decay"),
    ({"memory_budget": -1.0}, "--memory-budget"), ({"lr_warmup_epochs": -1}, "--lr-warmup"),
    ({"from_cache": "m.h5", "head_init": "random"}, "--from-head"),
    ({"from_cache": "m.h5", "warmup_epochs": 1}, "--warmup-epochs"),
    ({"from_cache": "m.h5", "augment": AugmentOptions()}, "--augment")])
def test_options_refuse_bad_values_when_built(kwargs, flag):
    with pytest.raises(UserError, match=flag.replace("(", r"\(").replace("'", "'")):
        FinetuneOptions(**kwargs)


def test_options_and_the_finetune_parser_import_no_tensorflow():
    """`finetune --help` reads its choices from options.py: neither may pull in TensorFlow."""
    import subprocess
    import sys

    code = ("import sys, bottleneck.finetune.options, bottleneck.cli.finetune; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         check=True).stdout
    assert out.strip() == "[]"


def test_options_derive_warmup_and_paths():
    assert FinetuneOptions().warmup == 0
    assert FinetuneOptions(head_init="random").warmup == 2
    assert FinetuneOptions(head_init="random", epochs=1).warmup == 1
    paths = CheckpointPaths.for_out("runs/m.keras")
    assert (paths.last, paths.state, paths.average, paths.report) == (
        "runs/m.last.keras", "runs/m.state.json", "runs/m.average.npz", "runs/m_report")


def test_unfreeze_default_is_the_stage_rule_advise_uses():
    """finetune's default and advise's top block are one rule: MobileNet's top stage starts at
    conv_dw_12 (the stride-2 depthwise conv into 7x7), not at conv_dw_13."""
    from bottleneck.backbones.stages import unfreeze_point
    from bottleneck.finetune.recipe import unfreeze_index

    body = keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25,
                                        input_shape=(64, 64, 3))
    index = unfreeze_index(body, None)
    assert body.layers[index].name == "conv_dw_12"
    assert index == unfreeze_point(body, 1)[1]
    assert body.layers[unfreeze_index(body, "conv_pw_5")].name == "conv_pw_5"


class _Network:
    """A tiny compiled Dense classifier standing in for the transplanted network."""

    @staticmethod
    def build(seed=0):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    return Data(train=ds.repeat(), val=ds, test=None, steps=4)


class _Recorder(Callback):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, trainer, row):
        trainer.improved = False
        trainer.state.stale += 1   # as BestCheckpoint does when val does not improve
        self.epochs.append(row["epoch"])


def _trainer(callbacks, epochs=5, state=None):
    return Trainer(_Network.build(), FinetuneOptions(epochs=epochs, lr=0.1), _data(),
                   state or TrainState(), callbacks, lambda *a: None)


def test_early_stopping_after_n_stale_epochs():
    recorder = _Recorder()
    trainer = _trainer([recorder, EarlyStopping(2)])
    assert trainer.fit() == "early stop: val did not improve for 2 epochs"
    assert recorder.epochs == [1, 2] and trainer.state.epoch == 2


def test_time_budget_stops_after_the_epoch_that_passes_it():
    recorder = _Recorder()
    trainer = _trainer([recorder, TimeBudget(1e-9)])
    assert trainer.fit().startswith("time budget")
    assert recorder.epochs == [1]


def test_csv_log_drops_rows_past_the_checkpoint_on_resume(tmp_path):
    """A kill between the log.csv write and the state write must not leave a duplicate row."""
    path = str(tmp_path / "log.csv")
    trainer = _trainer([CsvLog(path, TrainState())], epochs=3)
    trainer.fit()
    state = TrainState.from_json(json.loads(json.dumps(trainer.state.to_json())))
    state.epoch, state.history = 2, state.history[:2]   # the state lags the log by one
    resumed = _trainer([CsvLog(path, state)], epochs=3, state=state)
    resumed.fit()
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == LOG_FIELDS


def test_weight_average_keeps_the_running_sum_on_disk(tmp_path):
    from bottleneck.finetune.training import WeightAveraging

    opts = FinetuneOptions(epochs=2, average_last=2, out=str(tmp_path / "m.keras"))
    average = WeightAveraging(opts.paths.average, opts, TrainState(), lambda *a: None)
    trainer = _trainer([average], epochs=2)
    trainer.opts = opts
    seen = []

    class Snapshot(Callback):
        def on_epoch_end(self, trainer, row):
            seen.append([v.numpy().copy() for v in trainer.network.trainable_weights])

    trainer.callbacks = [Snapshot(), average]
    average.on_train_end = lambda trainer: None   # keep the trained weights to compare
    trainer.fit()
    with np.load(opts.paths.average) as sums:
        assert [int(e) for e in sums["epochs"]] == [1, 2]
        for i, (a, b) in enumerate(zip(*seen)):
            np.testing.assert_allclose(sums[f"w{i}"] / 2, (a + b) / 2, rtol=1e-6)
    assert os.path.isfile(opts.paths.average)


class _Snapshot(Callback):
    """The trainable weights after each epoch, and each epoch's row."""

    def __init__(self):
        self.weights, self.rows = [], []

    def on_epoch_end(self, trainer, row):
        self.weights.append([v.numpy().copy() for v in trainer.network.trainable_weights])
        self.rows.append(dict(row))


def _averaged_run(tmp_path, epochs, n):
    from bottleneck.finetune.training import WeightAveraging

    opts = FinetuneOptions(epochs=epochs, average_last=n, lr=0.1, out=str(tmp_path / "m.keras"))
    snapshot, state = _Snapshot(), TrainState()
    average = WeightAveraging(opts.paths.average, opts, state, lambda *a: None)
    trainer = Trainer(_Network.build(), opts, _data(), state, [snapshot, average],
                      lambda *a: None)
    trainer.fit()
    return trainer, snapshot, average


@pytest.mark.parametrize("n", [1, 2])
def test_weight_average_of_the_last_n_epochs_is_the_saved_model(tmp_path, n):
    """N=1 keeps the last epoch's weights, N=2 their mean with the epoch before; the mean is
    both the network's weights after training and the saved model's."""
    trainer, snapshot, average = _averaged_run(tmp_path, epochs=3, n=n)
    window = snapshot.weights[-n:]
    expected = [np.mean([w[i] for w in window], axis=0) for i in range(len(window[0]))]
    assert average.result["epochs"] == list(range(4 - n, 4)) and average.result["n"] == n
    saved = keras.saving.load_model(trainer.opts.paths.best, compile=False)
    for now, kept, mean in zip(trainer.network.trainable_weights, saved.trainable_weights,
                               expected):
        np.testing.assert_allclose(now.numpy(), mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(kept.numpy(), mean, rtol=1e-6, atol=1e-7)
    if n == 2:   # the two epochs differ, so the mean is neither of them
        assert not np.allclose(expected[0], snapshot.weights[-1][0])
    assert average.result["val_accuracy"] == pytest.approx(
        trainer.network.evaluate(_data().val, verbose=0, return_dict=True)["accuracy"])


def _staged_network():
    """Input -> `features` (holding a `tiny_taps` body of two Dense layers) -> softmax head:
    the nesting set_trainable expects of a transplanted network, in a few weights."""
    keras.utils.set_random_seed(0)
    body = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="low"),
                             keras.layers.Dense(3, name="top")], name="tiny_taps")
    image = keras.Input((4,))
    features = keras.Model(image, body(image), name="features")
    inputs = keras.Input((4,))
    head = keras.layers.Dense(2, activation="softmax", name="probabilities")
    return keras.Model(inputs, head(features(inputs))), body


def test_phase_change_unfreezes_after_warmup_and_schedules_the_lr():
    """Warm-up epochs train only the head at --warmup-lr; then the body trains from the unfreeze
    point (the layer below stays frozen) at the cosine schedule's rates."""
    from bottleneck.finetune.recipe import compile_network, schedule_lr, set_trainable

    network, body = _staged_network()
    opts = FinetuneOptions(head_init="random", epochs=3, warmup_epochs=1, lr=0.01,
                           warmup_lr=0.1, lr_schedule="cosine")
    set_trainable(network, None)
    compile_network(network, opts.optimizer, opts.warmup_lr)
    low, top = body.get_layer("low").kernel, body.get_layer("top").kernel
    start = {"low": low.numpy().copy(), "top": top.numpy().copy()}
    seen = []

    class Kernels(Callback):
        def on_epoch_end(self, trainer, row):
            seen.append((row["phase"], row["lr"], low.numpy().copy(), top.numpy().copy()))

    Trainer(network, opts, _data(), TrainState(), [Kernels()], lambda *a: None,
            unfreeze=(1, "top")).fit()
    assert [phase for phase, *_ in seen] == ["warmup", "finetune", "finetune"]
    assert [lr for _, lr, *_ in seen] == pytest.approx(
        [0.1, schedule_lr(0.01, "cosine", 0, 2), schedule_lr(0.01, "cosine", 1, 2)])
    assert seen[2][1] == pytest.approx(1e-4)
    np.testing.assert_array_equal(seen[0][3], start["top"])      # warm-up: body frozen
    assert not np.allclose(seen[2][3], start["top"])              # then the top trains
    for *_, low_kernel, _ in seen:                                 # below the point: never
        np.testing.assert_array_equal(low_kernel, start["low"])


def test_best_checkpoint_keeps_the_best_val_epoch_and_counts_stale_ones(tmp_path):
    from bottleneck.finetune.training import BestCheckpoint

    paths = CheckpointPaths.for_out(str(tmp_path / "m.keras"))
    scores = iter([(0.5, 1.0), (0.7, 0.9), (0.7, 0.95), (0.6, 0.5)])   # (val acc, val loss)

    class Fake(Callback):
        def on_epoch_end(self, trainer, row):
            row["val_accuracy"], row["val_loss"] = next(scores)

    trainer = _trainer([Fake(), BestCheckpoint(paths)], epochs=4)
    trainer.fit()
    assert trainer.state.best_epoch == 2 and trainer.state.best_score == [0.7, -0.9]
    assert trainer.state.stale == 2 and os.path.isfile(paths.best)

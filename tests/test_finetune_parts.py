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

from bottleneck.finetune.options import CheckpointPaths, FinetuneOptions
from bottleneck.finetune.training import (
    LOG_FIELDS,
    Callback,
    CsvLog,
    Data,
    EarlyStopping,
    TimeBudget,
    Trainer,
    new_state,
)
from features.errors import UserError
from features.tf import keras, tf


@pytest.mark.parametrize("kwargs,flag", [
    ({"epochs": 0}, "--epochs 0"), ({"batch_size": 0}, "--batch-size 0"),
    ({"lr_schedule": "linear"}, "--lr-schedule 'linear'"), ({"optimizer": "rmsprop"}, "rmsprop"),
    ({"label_smoothing": 1.0}, "--label-smoothing 1.0"), ({"head_init": "zeros"}, "zeros"),
    ({"average_last": 3, "epochs": 2}, "--average-last 3"), ({"patience": 0}, "--patience 0"),
    ({"time_budget": 0}, "--time-budget 0"), ({"class_weight": "inverse"}, "inverse")])
def test_options_refuse_bad_values_when_built(kwargs, flag):
    with pytest.raises(UserError, match=flag.replace("(", r"\(").replace("'", "'")):
        FinetuneOptions(**kwargs)


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
        trainer.state["stale"] += 1   # as BestCheckpoint does when val does not improve
        self.epochs.append(row["epoch"])


def _trainer(callbacks, epochs=5, state=None):
    return Trainer(_Network.build(), FinetuneOptions(epochs=epochs, lr=0.1), _data(),
                   state or new_state({}, None), callbacks, lambda *a: None)


def test_early_stopping_after_n_stale_epochs():
    recorder = _Recorder()
    trainer = _trainer([recorder, EarlyStopping(2)])
    assert trainer.fit() == "early stop: val did not improve for 2 epochs"
    assert recorder.epochs == [1, 2] and trainer.state["epoch"] == 2


def test_time_budget_stops_after_the_epoch_that_passes_it():
    recorder = _Recorder()
    trainer = _trainer([recorder, TimeBudget(1e-9)])
    assert trainer.fit().startswith("time budget")
    assert recorder.epochs == [1]


def test_csv_log_drops_rows_past_the_checkpoint_on_resume(tmp_path):
    """A kill between the log.csv write and the state write must not leave a duplicate row."""
    path = str(tmp_path / "log.csv")
    trainer = _trainer([CsvLog(path, new_state({}, None))], epochs=3)
    trainer.fit()
    state = json.loads(json.dumps(trainer.state))
    state["epoch"], state["history"] = 2, state["history"][:2]   # the state lags the log by one
    resumed = _trainer([CsvLog(path, state)], epochs=3, state=state)
    resumed.fit()
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == LOG_FIELDS


def test_weight_average_of_one_epoch_is_that_epoch(tmp_path):
    from bottleneck.finetune.training import WeightAveraging

    opts = FinetuneOptions(epochs=2, average_last=2, out=str(tmp_path / "m.keras"))
    average = WeightAveraging(opts.paths.average, opts, new_state({}, None), lambda *a: None)
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

"""The fine-tuning loop: a small Learner whose epochs are watched by callbacks.

`Trainer.fit` runs one Keras epoch at a time (so the warm-up -> fine-tune phase change and the
learning-rate schedule happen between epochs), scores val, then hands the epoch's row to each
callback in order: the CSV log, the best checkpoint, the weight average, the last checkpoint and
its state (what --resume reads), then asks each whether to stop (early stopping, time budget).
Every file is written atomically, and the state is written last, so a kill at any moment
resumes from a consistent epoch.
"""

from __future__ import annotations

import csv
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from bottleneck.finetune.options import CheckpointPaths, FinetuneOptions
from bottleneck.finetune.recipe import compile_network, schedule_lr, set_trainable
from bottleneck.finetune.transplant import inference_model, save_network
from features.atomic import atomic_path, write_json

LOG_FIELDS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


@dataclass
class TrainState:
    """What --resume needs of a run, written to MODEL.state.json after every epoch."""

    epoch: int = 0                      # epochs done
    best_score: list | None = None      # [val accuracy, -val loss] of the best epoch
    best_epoch: int | None = None       # 0: the transplanted network before training
    history: list[dict] = field(default_factory=list)   # one row per epoch (LOG_FIELDS)
    seconds: float = 0.0                # training time so far (--time-budget)
    initial: dict = field(default_factory=dict)         # val/test accuracy before training
    transplant: dict | None = None      # the transplant check
    phase: str | None = None            # "warmup" | "finetune" of the last epoch
    stale: int = 0                      # epochs since the best one (--patience)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainState:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class Data:
    """The split streams: train repeats with a fresh shuffle per pass, `steps` batches an epoch."""

    train: object
    val: object | None
    test: object | None
    steps: int
    class_weight: dict | None = None


class Callback:
    """Watches epochs; any method may be left out."""

    def on_epoch_end(self, trainer: "Trainer", row: dict) -> None:
        pass

    def stop_reason(self, trainer: "Trainer") -> str | None:
        return None

    def on_train_end(self, trainer: "Trainer") -> None:
        pass


class Trainer:
    """Epochs from `state.epoch` to `opts.epochs` on `network`, unfreezing after the warm-up."""

    def __init__(self, network, opts: FinetuneOptions, data: Data, state: TrainState,
                 callbacks: list[Callback], say, unfreeze: tuple[int, str] = (0, ""),
                 export=None, lr_scales: dict | None = None):
        self.network, self.opts, self.data, self.state = network, opts, data, state
        self.callbacks, self.say = callbacks, say
        self.unfreeze, self.unfreeze_name = unfreeze   # (index in the body, layer name)
        self.improved = False
        # what is saved as the model: the inference network; on the cache route, the whole
        # network (frozen bottom + the trained top) around the top that trains
        self._export = export
        self.lr_scales = lr_scales

    def export(self):
        """The network to save as the best (or averaged) model, sharing the trained weights."""
        return self._export() if self._export is not None else inference_model(self.network)

    def fit(self) -> str | None:
        """Train to the last epoch or until a callback stops it; returns why it stopped early."""
        stopped = None
        while self.state.epoch < self.opts.epochs and stopped is None:
            row = self._epoch(self.state.epoch)
            for callback in self.callbacks:
                callback.on_epoch_end(self, row)
            self.say(_epoch_line(row, self.opts.epochs, self.data.val is not None, self.improved))
            stopped = next((r for r in (c.stop_reason(self) for c in self.callbacks) if r), None)
        if stopped:
            self.say(stopped)
        for callback in self.callbacks:
            callback.on_train_end(self)
        return stopped

    def _enter_phase(self, epoch: int) -> str:
        """Unfreeze (and recompile) when the warm-up ends; set this epoch's learning rate."""
        opts, warmup = self.opts, self.opts.warmup
        phase = "warmup" if epoch < warmup else "finetune"
        if self.state.phase is not None and phase != self.state.phase:
            trainable = set_trainable(self.network, self.unfreeze)
            compile_network(self.network, opts.optimizer, opts.lr, opts.label_smoothing,
                            self.lr_scales)
            self.say(f"unfroze the body from layer #{self.unfreeze} {self.unfreeze_name}: "
                     f"{trainable['trainable_params']:,} trainable parameters")
        self.state.phase = phase
        if phase == "finetune":
            self.network.optimizer.learning_rate.assign(
                schedule_lr(opts.lr, opts.lr_schedule, epoch - warmup, opts.epochs - warmup,
                            opts.lr_warmup_epochs))
        return phase

    def _epoch(self, epoch: int) -> dict:
        """One pass over train, then val; the epoch's row (also appended to the history)."""
        from features.tf import keras

        phase = self._enter_phase(epoch)
        lr = float(keras.ops.convert_to_numpy(self.network.optimizer.learning_rate))
        started = time.time()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shuffle=True.*")
            fit = self.network.fit(self.data.train, epochs=epoch + 1, initial_epoch=epoch,
                                   verbose=0, steps_per_epoch=self.data.steps,
                                   class_weight=self.data.class_weight).history
        row = {"epoch": epoch + 1, "phase": phase, "loss": float(fit["loss"][-1]),
               "accuracy": float(fit["accuracy"][-1]), "val_loss": None, "val_accuracy": None,
               "lr": lr}
        if self.data.val is not None:
            row["val_loss"], row["val_accuracy"] = evaluate(self.network, self.data.val)
        row["seconds"] = round(time.time() - started, 2)
        self.state.seconds += row["seconds"]
        self.state.history.append(row)
        self.state.epoch = epoch + 1
        return row


def evaluate(network, dataset) -> tuple[float, float]:
    """(loss, accuracy) of `network` on a split."""
    scores = network.evaluate(dataset, verbose=0, return_dict=True)
    return float(scores["loss"]), float(scores["accuracy"])


def _epoch_line(row: dict, epochs: int, has_val: bool, improved: bool) -> str:
    return (f"epoch {row['epoch']}/{epochs} [{row['phase']}] loss {row['loss']:.4f} acc "
            f"{row['accuracy']:.4f}"
            + (f" val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f}"
               if has_val else "")
            + f" ({row['seconds']:.1f} s){' *' if improved else ''}")


# ---------------------------------------------------------------- callbacks

class CsvLog(Callback):
    """log.csv: one row per epoch, the whole (small) file rewritten atomically each epoch. On
    resume, rows past the checkpoint's epoch (a kill between the log write and the state write)
    are dropped, so no epoch appears twice."""

    def __init__(self, path: str, state: TrainState):
        self.path, self.rows = path, []
        if state.history and os.path.isfile(path):
            with open(path, newline="") as handle:
                self.rows = [r for r in csv.DictReader(handle)
                             if int(r["epoch"]) <= state.epoch]
        self._write()

    def on_epoch_end(self, trainer, row):
        self.rows.append({f: row[f] for f in LOG_FIELDS})
        self._write()

    def _write(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)


class BestCheckpoint(Callback):
    """Keeps the best epoch by val accuracy, then val loss (train figures without val) as the
    saved model; counts epochs without improvement for early stopping."""

    def __init__(self, paths: CheckpointPaths):
        self.paths = paths

    def on_epoch_end(self, trainer, row):
        state = trainer.state
        score = ((row["val_accuracy"], -row["val_loss"]) if trainer.data.val is not None
                 else (row["accuracy"], -row["loss"]))
        trainer.improved = state.best_score is None or tuple(score) > tuple(state.best_score)
        if trainer.improved:
            state.best_score, state.best_epoch, state.stale = list(score), row["epoch"], 0
            save_network(trainer.export(), self.paths.best)
        else:
            state.stale += 1


class LastCheckpoint(Callback):
    """The last epoch with its optimizer state, then the run's state: what --resume reads."""

    def __init__(self, paths: CheckpointPaths):
        self.paths = paths

    def on_epoch_end(self, trainer, row):
        save_network(trainer.network, self.paths.last)
        write_json(self.paths.state, trainer.state.to_json(), indent=1, default=float)


class EarlyStopping(Callback):
    """Stop after `patience` fine-tune epochs without a better val score."""

    def __init__(self, patience: int):
        self.patience = patience

    def stop_reason(self, trainer):
        stale = trainer.state.stale
        if trainer.state.phase == "finetune" and stale >= self.patience:
            return f"early stop: val did not improve for {stale} epochs"
        return None


class TimeBudget(Callback):
    """Stop after the epoch in which training time passes `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def stop_reason(self, trainer):
        if trainer.state.seconds >= self.seconds:
            return f"time budget of {self.seconds:g} s reached"
        return None


class WeightAveraging(Callback):
    """--average-last N: a running sum of the trainable weights of the last N fine-tune epochs,
    kept on disk so --resume continues it; at the end the mean becomes the saved model.
    BatchNorm is frozen, so the mean is a valid network as it stands (SWA without the BN pass)."""

    def __init__(self, path: str, opts: FinetuneOptions, state: TrainState, say):
        self.path, self.say = path, say
        self.window_start = opts.epochs - opts.average_last + 1   # first epoch (1-based) averaged
        self.sums, self.epochs, self.result = None, [], None
        if state.epoch < self.window_start:
            remove_stale(path)
        elif not self._load(state.epoch):
            say("the saved weight average is out of step with the checkpoint; averaging "
                "restarts from the next epoch")

    def on_epoch_end(self, trainer, row):
        if row["phase"] != "finetune" or row["epoch"] < self.window_start:
            return
        weights = [np.asarray(v.numpy(), dtype=np.float64)
                   for v in trainer.network.trainable_weights]
        self.sums = weights if self.sums is None else [a + w for a, w in zip(self.sums, weights)]
        self.epochs.append(int(row["epoch"]))
        with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, epochs=np.asarray(self.epochs, dtype=np.int64),
                     **{f"w{i}": a for i, a in enumerate(self.sums)})

    def on_train_end(self, trainer):
        if not self.epochs:
            self.say("--average-last: no epoch reached the averaging window; keeping the best "
                     "epoch")
            return
        for variable, total in zip(trainer.network.trainable_weights, self.sums):
            variable.assign((total / len(self.epochs)).astype(np.float32))
        self.result = {"epochs": self.epochs, "n": len(self.epochs)}
        if trainer.data.val is not None:
            loss, accuracy = evaluate(trainer.network, trainer.data.val)
            self.result.update(val_accuracy=accuracy, val_loss=loss)
        save_network(trainer.export(), trainer.opts.paths.best)
        self.say(f"averaged the weights of epochs {self.epochs[0]}-{self.epochs[-1]}"
                 + (f": val_acc {self.result['val_accuracy']:.4f}"
                    if trainer.data.val is not None else "")
                 + " (this is the saved model)")

    def _load(self, through_epoch: int) -> bool:
        """Take the saved sum if it ends at `through_epoch` (the checkpoint's)."""
        if not os.path.isfile(self.path):
            return False
        with np.load(self.path) as data:
            epochs = [int(e) for e in data["epochs"]]
            if not epochs or epochs[-1] != through_epoch:
                return False
            self.sums = [data[f"w{i}"] for i in range(len(data.files) - 1)]
        self.epochs = epochs
        return True


def remove_stale(path: str) -> None:
    """Drop a weight average an earlier run with this --out left behind."""
    if os.path.isfile(path):
        os.remove(path)


def callbacks_for(opts: FinetuneOptions, state: TrainState, say) -> list[Callback]:
    """The callbacks a run's flags ask for, in the order their files must be written."""
    paths = opts.paths
    out: list[Callback] = [CsvLog(os.path.join(paths.report, "log.csv"), state),
                           BestCheckpoint(paths)]
    if opts.average_last:
        out.append(WeightAveraging(paths.average, opts, state, say))
    else:
        remove_stale(paths.average)
    out.append(LastCheckpoint(paths))
    if opts.patience is not None:
        out.append(EarlyStopping(opts.patience))
    if opts.time_budget is not None:
        out.append(TimeBudget(opts.time_budget))
    return out

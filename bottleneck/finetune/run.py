"""Stage 3: the best head transplanted onto the feature network, then trained end to end.

`run_finetune` rebuilds the feature network from the head's (or cache's) provenance, puts the head
on top as Keras layers (bottleneck/transplant.py), checks on the cache's test images that the
network predicts what the head predicts on the cached features, then trains on the cache's train
split (val for checkpoint choice and early stopping; test scored once at the end).

BatchNormalization layers are never trainable: in Keras 3 a BN layer with trainable=False runs in
inference mode (moving statistics, no updates) even when the model is called with training=True.
Layers below `--unfreeze-from` stay frozen.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from bottleneck.data.augment import AugmentOptions
from bottleneck.data.augment_layers import augmentation_layers
from bottleneck.finetune.transplant import (
    apply_spec,
    build_network,
    class_info,
    inference_model,
    random_spec,
    taps_model,
)
from features.errors import UserError
from features.tf import keras

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")


@dataclass
class FinetuneOptions:
    from_head: str | None = None
    features: str | None = None        # cache; default: the head's provenance cache_path
    head_init: str = "head"            # "head" (transplant) | "random" (classic route)
    data: str | None = None            # image root; default: the cache's data_dir
    weights: str | None = None         # local weights file, if not at the recorded path
    epochs: int = 10
    warmup_epochs: int | None = None   # default 0 with a transplanted head, 2 with a random one
    warmup_lr: float | None = None     # default 10 x lr
    unfreeze_from: str | None = None   # layer name or index in the body; default: the top block
    lr: float = 1e-4
    lr_schedule: str = "constant"      # "constant" | "cosine" (decay over the fine-tune epochs)
    label_smoothing: float = 0.0
    optimizer: str = "sgd"
    batch_size: int = 32
    augment: AugmentOptions | None = None
    class_weight: str | None = None    # None | "balanced"
    patience: int | None = None
    out: str = "finetuned.keras"
    report: str | None = None          # default: <out stem>_report/
    seed: int = 0
    resume: bool = False
    check_samples: int = 64
    time_budget: float | None = None   # seconds of training; stop after the epoch that passes it
    average_last: int = 0              # >0: the output is the mean weights of the last N epochs
    head: dict | None = field(default=None, repr=False)  # {spec, provenance, kind, predict_proba}


# ---------------------------------------------------------------- head and cache

def load_head_spec(path: str) -> dict:
    """{'spec', 'provenance', 'kind', 'predict_proba', 'scores'} from a saved head (.joblib)."""
    from features.headfile import load_head
    from features.spec import head_layer_spec

    bundle = load_head(path)
    try:
        spec = head_layer_spec(bundle["pipeline"])
    except UserError as exc:
        if "--head-init random" in str(exc):
            raise
        raise UserError(f"{exc} -- this head cannot become network layers exactly: use "
                        "--head-init random (classic route), or refit a linear head "
                        "(logistic, linear SVM, SGD) or an MLP and pass that") from exc
    return {"spec": spec, "provenance": bundle["provenance"], "kind": bundle.get("kind"),
            "predict_proba": bundle["pipeline"].predict_proba, "bundle": bundle,
            "scores": bundle.get("scores", {})}


def open_cache(opts: FinetuneOptions, head: dict | None):
    """The cache whose split and images we train on; checked against the head's provenance."""
    from features.store import Cache

    prov = (head or {}).get("provenance")
    path = opts.features or (prov.cache_path if prov else None)
    if not path:
        raise UserError("no feature cache: pass --features FILE.h5 (the cache the head was fit on)")
    cache = Cache(path)
    if head is None:
        return cache
    from features.headfile import check_head_matches

    try:   # a bare spec + provenance (library use, tests) is checked like a head file
        check_head_matches(head.get("bundle") or {"provenance": prov}, cache)
    except UserError:
        cache.close()
        raise
    return cache


def head_feature_layers(head: dict | None, cache) -> list[str]:
    """The cache layers the head reads, in its concatenation order (all layers by default)."""
    prov = (head or {}).get("provenance")
    layers = list(prov.taps if prov is not None else cache.layers)
    missing = [layer for layer in layers if layer not in cache.layers]
    if missing:
        raise UserError(f"the head reads {', '.join(missing)}, which {cache.path} does not hold")
    return layers


def cached_features(cache, rows, layers=None) -> np.ndarray:
    """The head's input: `layers` (default all) flattened and concatenated in order."""
    return cache.features(layers or cache.layers, rows)


def refit_head_on_train(head: dict, cache, layers, train_rows, say) -> dict:
    """A head refit on train+val has seen the val split that fine-tuning uses to choose its
    checkpoint and stop early: refit a copy on the train rows only, same hyper-parameters."""
    from sklearn.base import clone

    from features.spec import head_layer_spec

    started = time.time()
    pipeline = clone(head["bundle"]["pipeline"])
    pipeline.fit(cached_features(cache, train_rows, layers), cache.labels[train_rows])
    say(f"the head was refit on train+val; refit it on the {len(train_rows)} train images only "
        f"(same hyper-parameters, {time.time() - started:.1f} s) so val stays unseen for "
        "checkpoint choice")
    return {**head, "spec": head_layer_spec(pipeline), "predict_proba": pipeline.predict_proba,
            "refit": "train"}


# ---------------------------------------------------------------- trainability

def _is_bn(layer) -> bool:
    from features.tf import keras
    return isinstance(layer, keras.layers.BatchNormalization)


def resolve_unfreeze(body, spec: str | None) -> int:
    """Index into body.layers from which layers train. Default: the top block, i.e. walking down
    from the top layer while names carry its last number (conv_dw_13 .. conv_pw_13_relu, block5_*,
    conv5_block3_*); for a top layer without a number, the top 10 % of the layers."""
    names = [layer.name for layer in body.layers]
    if spec is None:
        numbers = re.findall(r"\d+", names[-1])
        if not numbers:
            return max(1, int(len(names) * 0.9))
        token = re.compile(rf"(^|\D){numbers[-1]}(\D|$)")
        index = len(names) - 1
        while index > 1 and token.search(names[index - 1]):
            index -= 1
        return index
    from bottleneck.backbones.network import layer_index

    return layer_index(body, spec, flag="--unfreeze-from", body_is="the body up to the tap")


def set_trainable(network, unfreeze_index: int | None) -> dict:
    """Freeze the whole body (None) or train body layers from `unfreeze_index` up, BN excepted."""
    body = taps_model(network)
    network.get_layer("features").trainable = True
    body.trainable = unfreeze_index is not None
    n_trainable = 0
    if unfreeze_index is not None:
        for i, layer in enumerate(body.layers):
            layer.trainable = i >= unfreeze_index and not _is_bn(layer)
            n_trainable += bool(layer.trainable and layer.weights)
    return {"body_layers_trainable": n_trainable,
            "trainable_params": int(sum(np.prod(v.shape) for v in network.trainable_weights))}


def make_optimizer(name: str, lr: float):
    from features.tf import keras
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    raise UserError(f"--optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def schedule_lr(base: float, schedule: str, step: int, steps: int) -> float:
    """Learning rate of fine-tune epoch `step` (0-based) of `steps`: constant, or half a cosine
    from `base` down to base/100 at the last epoch (fewer noisy late epochs, a settled end)."""
    if schedule not in SCHEDULES:
        raise UserError(f"--lr-schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if schedule == "constant" or steps <= 1:
        return base
    floor = base / 100
    return floor + (base - floor) * 0.5 * (1 + np.cos(np.pi * step / (steps - 1)))


@keras.saving.register_keras_serializable(package="bottleneck")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy on integer labels with label smoothing (Keras' sparse loss has none): the
    target puts 1 - s on the true class plus s / n_classes on every class."""

    def __init__(self, smoothing=0.0, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        n = keras.ops.shape(y_pred)[-1]
        y = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), n)
        y = y * (1.0 - self.smoothing) + self.smoothing / keras.ops.cast(n, y.dtype)
        return keras.losses.categorical_crossentropy(y, y_pred)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing}


def make_loss(label_smoothing: float):
    if not 0 <= label_smoothing < 1:
        raise UserError(f"--label-smoothing {label_smoothing} must be in [0, 1)")
    return (SmoothedSparseCrossentropy(label_smoothing) if label_smoothing
            else "sparse_categorical_crossentropy")


def compile_network(network, optimizer: str, lr: float, label_smoothing: float = 0.0):
    network.compile(optimizer=make_optimizer(optimizer, lr), loss=make_loss(label_smoothing),
                    metrics=["accuracy"])


# ---------------------------------------------------------------- transplant check

def transplant_check(network, cache, rows, data_dir: str, reference, layers=None) -> dict:
    """Network probabilities on images vs `reference(cached features)` on the same rows."""
    from bottleneck.backbones.network import compiled_forward
    from bottleneck.data.images import load_batch

    rows = np.sort(np.asarray(rows))
    if not len(rows):
        return {"n": 0, "agreement": None, "max_abs_prob_diff": None}
    size = network.inputs[0].shape[1]
    images, ok, bad = load_batch([os.path.join(data_dir, cache.paths[r]) for r in rows], size)
    if bad:
        raise UserError(f"cannot read {len(bad)} test image(s) under {data_dir} (e.g. "
                        f"{cache.paths[rows[bad[0][0]]]}: {bad[0][1]}); pass --data DIR")
    forward = compiled_forward(network)
    net = np.concatenate([forward(images[i:i + 32])[0].numpy() for i in range(0, len(images), 32)])
    ref = np.asarray(reference(cached_features(cache, rows, layers)))
    agree = float(np.mean(net.argmax(1) == ref.argmax(1)))
    return {"n": int(len(rows)), "agreement": agree,
            "max_abs_prob_diff": float(np.abs(net - ref).max())}


# ---------------------------------------------------------------- the run

def save_atomic(model, path: str) -> None:
    """Save a .keras file under a temporary name and rename it: a kill never leaves half a file."""
    tmp = path[:-len(".keras")] + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def write_state(path: str, state: dict) -> None:
    with open(path + ".tmp", "w") as handle:
        json.dump(state, handle, indent=1, default=float)
    os.replace(path + ".tmp", path)


def _paths(out: str) -> dict:
    stem = out[:-6] if out.endswith(".keras") else out
    return {"best": out if out.endswith(".keras") else out + ".keras",
            "last": stem + ".last.keras", "state": stem + ".state.json",
            "average": stem + ".average.npz"}


class WeightAverage:
    """Running sum of the trainable weights over epochs, kept on disk next to the checkpoint so
    --resume continues it. BatchNorm is frozen, so the averaged network needs no re-estimated
    statistics: the mean of the weights is a valid network as it stands (SWA without the BN pass)."""

    def __init__(self, path: str):
        self.path, self.sums, self.count, self.epochs = path, None, 0, []

    def add(self, weights, epoch: int) -> None:
        weights = [np.asarray(w, dtype=np.float64) for w in weights]
        self.sums = weights if self.sums is None else [a + w for a, w in zip(self.sums, weights)]
        self.count += 1
        self.epochs.append(int(epoch))

    def mean(self) -> list:
        return [(a / self.count).astype(np.float32) for a in self.sums]

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as handle:
            np.savez(handle, epochs=np.asarray(self.epochs, dtype=np.int64),
                     **{f"w{i}": a for i, a in enumerate(self.sums)})
        os.replace(tmp, self.path)

    def load(self, through_epoch: int) -> bool:
        """Take the saved sum if it ends at `through_epoch` (the checkpoint's); False otherwise."""
        if not os.path.isfile(self.path):
            return False
        with np.load(self.path) as data:
            epochs = [int(e) for e in data["epochs"]]
            if not epochs or epochs[-1] != through_epoch:
                return False
            self.sums = [data[f"w{i}"] for i in range(len(data.files) - 1)]
        self.count, self.epochs = len(epochs), epochs
        return True


def run_finetune(opts: FinetuneOptions, say=print) -> dict:
    with warnings.catch_warnings():
        # val/test streams have unknown length (undecodable files are dropped): Keras finds
        # their end on the first pass and says so every time; nothing is wrong
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        warnings.filterwarnings("ignore", message=".*shuffle=True.*")
        return _run_finetune(opts, say)


def _run_finetune(opts: FinetuneOptions, say=print) -> dict:
    from bottleneck.backbones.network import feature_model_from_provenance
    from bottleneck.data.images import labelled_dataset
    from features.tf import keras

    started = time.time()
    if opts.epochs < 1:
        raise UserError("--epochs must be at least 1")
    if opts.head_init not in ("head", "random"):
        raise UserError("--head-init: choose head (transplant --from-head) or random")
    if opts.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    schedule_lr(opts.lr, opts.lr_schedule, 0, opts.epochs)   # bad flags fail before any work
    make_loss(opts.label_smoothing)
    if opts.average_last < 0 or opts.average_last > opts.epochs:
        raise UserError(f"--average-last {opts.average_last}: pick 0 (off) to --epochs "
                        f"({opts.epochs})")
    keras.utils.set_random_seed(opts.seed)

    # -- the head (or a random one) and the cache whose split we train on
    head = opts.head
    if opts.head_init == "head":
        if head is None:
            if not opts.from_head:
                raise UserError("pass --from-head HEAD.joblib (a fitted head), or "
                                "--head-init random --features FILE.h5")
            head = load_head_spec(opts.from_head)
        cache = open_cache(opts, head)
    else:
        if not opts.features:
            raise UserError("--head-init random needs --features FILE.h5 for the split and network")
        cache = open_cache(opts, None)
    layers = head_feature_layers(head, cache)
    prov = cache.provenance().with_taps(layers)
    data_dir = opts.data or prov.data_dir
    if not os.path.isdir(data_dir):
        raise UserError(f"the images are not at {data_dir!r} any more; pass --data DIR")
    class_names = list(cache.class_names)
    d_in = sum(cache.feature_dim(layer) for layer in layers)
    spec = head["spec"] if head is not None else random_spec(d_in, len(class_names), opts.seed)
    warmup = opts.warmup_epochs if opts.warmup_epochs is not None else (
        0 if opts.head_init == "head" else 2)
    warmup = min(max(0, warmup), opts.epochs)
    paths = _paths(opts.out)
    report_dir = opts.report or (paths["best"][:-6] + "_report")
    info = {"route": opts.head_init, "head_kind": head.get("kind") if head else "random",
            "from_head": opts.from_head, "provenance": prov.to_json()}

    # -- rows of each split
    rows = {name: np.flatnonzero(cache.split_mask(name)) for name in ("train", "val", "test")}
    if (head is not None and head.get("scores", {}).get("refit_on") == "train+val"
            and head.get("scores", {}).get("route") == "out-of-core"):
        say("note: this out-of-core head was refit on train+val, so the val split is not "
            "unseen; refit it with `--refit-on train` for an honest checkpoint choice")
    elif (head is not None and head.get("scores", {}).get("refit_on") == "train+val"
            and len(rows["val"]) and len(rows["train"])):
        head = refit_head_on_train(head, cache, layers, rows["train"], say)
        spec = head["spec"]
        info["head_refit"] = "train"
    if not len(rows["train"]):
        raise UserError("the cache has no train images; re-extract with a split")
    files = [os.path.join(data_dir, p) for p in cache.paths]

    def split_ds(name, shuffle=False, cache_images=False):
        r = rows[name]
        return labelled_dataset([files[i] for i in r], cache.labels[r], prov.image_size,
                                opts.batch_size, shuffle=shuffle, seed=opts.seed,
                                cache=cache_images)

    # -- network: fresh, or the last checkpoint when resuming
    state = None
    if opts.resume and os.path.isfile(paths["state"]) and os.path.isfile(paths["last"]):
        try:
            with open(paths["state"]) as handle:
                state = json.load(handle)
            network = keras.saving.load_model(paths["last"])
        except (ValueError, OSError, KeyError) as exc:
            raise UserError(f"cannot resume from {paths['last']} / {paths['state']} ({exc}); "
                            "run again without --resume to start over") from exc
        say(f"resuming from {paths['last']} after epoch {state['epoch']}")
    elif opts.resume:
        say(f"--resume: no checkpoint at {paths['last']}; starting fresh")
    if state is None:
        feature_model, _ = feature_model_from_provenance(prov, weights=opts.weights)
        aug = augmentation_layers(opts.augment, opts.seed) if opts.augment else None
        network = build_network(feature_model, spec, class_names, augment=aug, info=info)
    body = taps_model(network)
    unfreeze = resolve_unfreeze(body, opts.unfreeze_from)

    # -- transplant check (before any training step)
    check = None
    if opts.head_init == "head" and state is None:
        test_rows = rows["test"] if len(rows["test"]) else rows["val"]
        n = min(opts.check_samples, len(test_rows))
        sample = test_rows[np.linspace(0, len(test_rows) - 1, n).astype(int)] if n else test_rows
        reference = head.get("predict_proba") or (lambda X: apply_spec(spec, X))
        check = transplant_check(network, cache, np.unique(sample), data_dir, reference, layers)
    if check is not None and not check["n"]:
        say("transplant check skipped: the cache has no test or val images to compare on")
        check = None
    elif check is not None:
        say(f"transplant check on {check['n']} test images: agreement "
            f"{100 * check['agreement']:.2f}% of argmax, max |prob diff| "
            f"{check['max_abs_prob_diff']:.2e}")
        if check["agreement"] < 0.995 or check["max_abs_prob_diff"] > 1e-3:
            say("  WARNING: the transplanted network does not reproduce the head "
                "(needs >= 99.5% agreement and <= 1e-3); check --data and --weights")

    val_ds = split_ds("val", cache_images=True) if len(rows["val"]) else None
    test_ds = split_ds("test", cache_images=False) if len(rows["test"]) else None
    # repeated, with a fixed number of steps: each epoch sees every train image once (a fresh
    # shuffle per pass), and Keras does not warn about running out of data
    train_ds = split_ds("train", shuffle=True).repeat()
    steps = int(np.ceil(len(rows["train"]) / opts.batch_size))

    initial = {}
    if state is None:
        set_trainable(network, None if warmup else unfreeze)
        compile_network(network, opts.optimizer, opts.lr if not warmup else
                        (opts.warmup_lr or 10 * opts.lr), opts.label_smoothing)
        if opts.head_init == "head":
            for name, ds in (("val", val_ds), ("test", test_ds)):
                if ds is not None:
                    initial[f"{name}_accuracy"] = float(
                        network.evaluate(ds, verbose=0, return_dict=True)["accuracy"])
            if initial:
                say("before training: " + ", ".join(f"{k} {v:.4f}" for k, v in initial.items()))
        state = {"epoch": 0, "best_score": None, "best_epoch": None, "history": [],
                 "seconds": 0.0, "initial": initial, "transplant": check, "phase": None,
                 "stale": 0}
        if opts.head_init == "head" and val_ds is not None:
            # the transplanted network is epoch 0: training must beat it to replace it
            val = network.evaluate(val_ds, verbose=0, return_dict=True)
            state["best_score"] = [float(val["accuracy"]), -float(val["loss"])]
            state["best_epoch"] = 0
            save_atomic(inference_model(network), paths["best"])
    else:
        initial, check = state.get("initial", {}), state.get("transplant")

    class_weight = None
    if opts.class_weight == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(cache.labels[rows["train"]])
        weights = compute_class_weight("balanced", classes=present, y=cache.labels[rows["train"]])
        class_weight = {int(c): float(w) for c, w in zip(present, weights)}
    elif opts.class_weight not in (None, "none"):
        raise UserError("--class-weight: only 'balanced' is supported")

    os.makedirs(report_dir, exist_ok=True)
    for p in paths.values():
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    log_path = os.path.join(report_dir, "log.csv")
    fields = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    if not state["history"] or not os.path.isfile(log_path):
        with open(log_path, "w", newline="") as handle:
            csv.writer(handle).writerow(fields)

    average = WeightAverage(paths["average"]) if opts.average_last else None
    window_start = opts.epochs - opts.average_last + 1   # first epoch (1-based) averaged
    if average is not None and state["epoch"] >= window_start:
        if not average.load(state["epoch"]):
            say("the saved weight average is out of step with the checkpoint; averaging restarts "
                "from the next epoch")
    elif os.path.isfile(paths["average"]):
        os.remove(paths["average"])   # a stale average from an earlier run with this --out

    stopped = None
    while state["epoch"] < opts.epochs:
        epoch = state["epoch"]
        phase = "warmup" if epoch < warmup else "finetune"
        if state["phase"] is not None and phase != state["phase"]:
            info_t = set_trainable(network, unfreeze)
            compile_network(network, opts.optimizer, opts.lr, opts.label_smoothing)
            say(f"unfroze the body from layer #{unfreeze} {body.layers[unfreeze].name}: "
                f"{info_t['trainable_params']:,} trainable parameters")
        state["phase"] = phase
        if phase == "finetune":
            network.optimizer.learning_rate.assign(
                schedule_lr(opts.lr, opts.lr_schedule, epoch - warmup, opts.epochs - warmup))
        lr = float(keras.ops.convert_to_numpy(network.optimizer.learning_rate))
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shuffle=True.*")
            fit = network.fit(train_ds, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                              steps_per_epoch=steps, class_weight=class_weight).history
        row = {"epoch": epoch + 1, "phase": phase, "loss": float(fit["loss"][-1]),
               "accuracy": float(fit["accuracy"][-1]), "val_loss": None, "val_accuracy": None,
               "lr": lr}
        if val_ds is not None:
            val = network.evaluate(val_ds, verbose=0, return_dict=True)
            row["val_loss"], row["val_accuracy"] = float(val["loss"]), float(val["accuracy"])
        row["seconds"] = round(time.time() - t0, 2)
        state["seconds"] += row["seconds"]
        state["history"].append(row)
        state["epoch"] = epoch + 1
        with open(log_path, "a", newline="") as handle:
            csv.writer(handle).writerow([row[f] for f in fields])
        # best: highest val accuracy, then lowest val loss (train figures without a val split)
        score = ((row["val_accuracy"], -row["val_loss"]) if val_ds is not None
                 else (row["accuracy"], -row["loss"]))
        improved = state["best_score"] is None or tuple(score) > tuple(state["best_score"])
        if improved:
            state["best_score"], state["best_epoch"], state["stale"] = list(score), epoch + 1, 0
            save_atomic(inference_model(network), paths["best"])
        else:
            state["stale"] += 1
        if average is not None and phase == "finetune" and epoch + 1 >= window_start:
            average.add([v.numpy() for v in network.trainable_weights], epoch + 1)
            average.save()
        save_atomic(network, paths["last"])
        write_state(paths["state"], state)
        say(f"epoch {epoch + 1}/{opts.epochs} [{phase}] loss {row['loss']:.4f} acc "
            f"{row['accuracy']:.4f}" + (f" val_loss {row['val_loss']:.4f} val_acc "
                                        f"{row['val_accuracy']:.4f}" if val_ds is not None else "")
            + f" ({row['seconds']:.1f} s){' *' if improved else ''}")
        if opts.patience is not None and phase == "finetune" and state["stale"] >= opts.patience:
            stopped = f"early stop: val did not improve for {state['stale']} epochs"
            break
        if opts.time_budget is not None and state["seconds"] >= opts.time_budget:
            stopped = f"time budget of {opts.time_budget:g} s reached"
            break
    if stopped:
        say(stopped)

    averaged = None
    if average is not None and average.count:
        # the output is the mean of the window's weights, whatever val says of single epochs
        for variable, value in zip(network.trainable_weights, average.mean()):
            variable.assign(value)
        averaged = {"epochs": average.epochs, "n": average.count}
        if val_ds is not None:
            val = network.evaluate(val_ds, verbose=0, return_dict=True)
            averaged.update(val_accuracy=float(val["accuracy"]), val_loss=float(val["loss"]))
        save_atomic(inference_model(network), paths["best"])
        say(f"averaged the weights of epochs {average.epochs[0]}-{average.epochs[-1]}"
            + (f": val_acc {averaged['val_accuracy']:.4f}" if val_ds is not None else "")
            + " (this is the saved model)")
    elif average is not None:
        say("--average-last: no epoch reached the averaging window; keeping the best epoch")

    # -- the saved model (best epoch, or the average), scored once on test
    best = keras.saving.load_model(paths["best"], compile=False)
    result = {
        "model": paths["best"], "route": opts.head_init, "head_kind": info["head_kind"],
        "backbone": prov.backbone, "image_size": prov.image_size,
        "transplant_agreement": None if check is None else check["agreement"],
        "transplant_max_abs_prob_diff": None if check is None else check["max_abs_prob_diff"],
        "transplant_n": None if check is None else check["n"],
        "initial": initial, "epochs": state["history"], "best_epoch": state["best_epoch"],
        "stopped": stopped, "train_seconds": round(state["seconds"], 2),
        "averaged": averaged, "selected": "average" if averaged else "best val epoch",
        "unfreeze_from": body.layers[unfreeze].name, "warmup_epochs": warmup,
        "split": {k: int(len(v)) for k, v in rows.items()}, "report": report_dir,
    }
    if head is not None and head.get("scores"):
        result["head_scores"] = head["scores"]
    if test_ds is not None:
        from bottleneck.finetune.report import write_report

        probs = best.predict(test_ds, verbose=0)
        y = cache.labels[rows["test"]]
        if len(probs) != len(y):  # an image became unreadable since extraction
            raise UserError(f"{len(y) - len(probs)} test image(s) could not be read; check --data")
        result.update(write_report(report_dir, y, probs, class_names, extra={
            k: result[k] for k in ("route", "head_kind", "transplant_agreement", "best_epoch",
                                   "selected", "averaged", "initial", "model")}))
        chosen = (f"weights averaged over epochs {averaged['epochs'][0]}-{averaged['epochs'][-1]}"
                  if averaged else f"best epoch {state['best_epoch']}")
        say(f"test accuracy {result['test_accuracy']:.4f} ({chosen}; "
            f"before training {initial.get('test_accuracy', float('nan')):.4f})")
    else:
        result["test_accuracy"] = None
    from bottleneck.finetune.report import plot_curves

    plot_curves(os.path.join(report_dir, "training_curves.png"), state["history"])
    result["seconds"] = round(time.time() - started, 2)
    say(f"saved {paths['best']} (best), {paths['last']} (last, for --resume), report in "
        f"{report_dir}/")
    cache.close()
    return result


# ---------------------------------------------------------------- predict / export

def load_finetuned(path: str):
    """(predict, class_names, image_size) for a model saved by `finetune`.

    `predict(images)` takes float32 RGB in [0, 255] of shape (N, image_size, image_size, 3)
    (decode with bottleneck.images.load_batch) and returns (N, n_classes) float32 probabilities.
    """
    from bottleneck.backbones.network import compiled_forward
    from features.tf import keras

    if not os.path.isfile(path):
        raise UserError(f"--model {path}: no such file; train one with `python cli.py finetune`")
    try:
        model = keras.saving.load_model(path, compile=False)
        class_names, _ = class_info(model)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path} is not a model saved by `finetune` ({type(exc).__name__})") from exc
    model = inference_model(model)
    forward = compiled_forward(model)
    size = int(model.inputs[0].shape[1])

    def predict(images):
        images = np.asarray(images, dtype=np.float32)
        if not len(images):
            return np.zeros((0, len(class_names)), np.float32)
        return np.concatenate([forward(images[i:i + 64])[0].numpy()
                               for i in range(0, len(images), 64)])

    return predict, class_names, size


def load_keras_predictor(path: str, weights: str | None = None):
    """`predict --model MODEL.keras`: a bottleneck.predictor.Predictor for a fine-tuned network
    (`weights` is unused: the .keras file holds every weight)."""
    from bottleneck.finetune.transplant import class_info
    from bottleneck.predict.predictor import Predictor

    predict, class_names, size = load_finetuned(path)
    from features.tf import keras
    _, info = class_info(keras.saving.load_model(path, compile=False))
    return Predictor(kind="keras", path=path, class_names=class_names, image_size=size,
                     predict_images=predict, info={k: info.get(k) for k in
                                                   ("route", "head_kind", "from_head")})

"""Stage 3: the best head transplanted onto the feature network, then trained end to end.

`run_finetune` composes the parts: the head and cache (source.py), the network with the head on
top as Keras layers (transplant.py), a check on the cache's test images that the network predicts
what the head predicts on the cached features, the training loop and its callbacks (training.py,
recipe.py), and the report (report.py). Training uses the cache's split: train to train, val to
choose the checkpoint and stop early, test scored once at the end.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np

from bottleneck.finetune.options import FinetuneOptions
from bottleneck.finetune.recipe import (
    balanced_class_weight,
    block_lr_scales,
    compile_network,
    set_trainable,
    unfreeze_index,
)
from bottleneck.finetune.source import Head, Source, open_source
from bottleneck.finetune.training import (
    Data,
    Trainer,
    TrainState,
    WeightAveraging,
    callbacks_for,
    evaluate,
)
from bottleneck.finetune.transplant import (
    apply_spec,
    attach_meta,
    build_network,
    inference_model,
    read_meta,
    save_network,
    taps_model,
    transplant_check,
)
from features.errors import UserError


def run_finetune(opts: FinetuneOptions, say=print, head: Head | None = None) -> dict:
    """Fine-tune from `opts` (a pre-loaded `head` may stand in for --from-head); returns the
    run's summary."""
    with warnings.catch_warnings():
        # val/test streams have unknown length (undecodable files are dropped): Keras finds
        # their end on the first pass and says so every time; nothing is wrong
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        warnings.filterwarnings("ignore", message=".*shuffle=True.*")
        from features.tf import keras

        started = time.time()
        keras.utils.set_random_seed(opts.seed)
        source = open_source(opts, say, head)
        try:
            if opts.from_cache:
                from bottleneck.finetune.cached import run_from_cache

                return run_from_cache(opts, source, say, started)
            return _train_and_report(opts, source, say, started)
        finally:
            source.cache.close()


def _train_and_report(opts: FinetuneOptions, source: Source, say, started: float) -> dict:
    network, state = _network(opts, source, say)
    body = taps_model(network)
    unfreeze = unfreeze_index(body, opts.unfreeze_from)
    scales = block_lr_scales(body.layers, body, opts.block_lr_decay)
    check = _check_transplant(network, opts, source, say) if state is None else None
    data = _datasets(opts, source)
    opts.paths.make_folders()
    if opts.find_lr:
        return _find_lr(network, opts, data, unfreeze, scales, say)
    if state is None:
        state = _start(network, opts, source, data, unfreeze, check, say, scales)
    callbacks = callbacks_for(opts, state, say)
    stopped = Trainer(network, opts, data, state, callbacks, say,
                      unfreeze=(unfreeze, body.layers[unfreeze].name), lr_scales=scales).fit()
    averaged = next((c.result for c in callbacks if isinstance(c, WeightAveraging)), None)
    result = _summary(opts, source, state, stopped, averaged, body.layers[unfreeze].name)
    result.update(_score_test(opts, source, data, result, say))
    from bottleneck.finetune.report import plot_curves

    plot_curves(os.path.join(opts.paths.report, "training_curves.png"), state.history)
    result["seconds"] = round(time.time() - started, 2)
    say(f"saved {opts.paths.best} (best), {opts.paths.last} (last, for --resume), report in "
        f"{opts.paths.report}/")
    return result


def _network(opts: FinetuneOptions, source: Source, say):
    """(network, saved state): the last checkpoint on --resume, else a fresh one (state None)."""
    from bottleneck.backbones.network import feature_model_from_provenance
    from bottleneck.data.augment_layers import augmentation_layers
    from features.tf import keras

    paths = opts.paths
    if opts.resume and os.path.isfile(paths.state) and os.path.isfile(paths.last):
        try:
            with open(paths.state) as handle:
                state = TrainState.from_json(json.load(handle))
            network = keras.saving.load_model(paths.last)
        except (ValueError, OSError, KeyError, TypeError) as exc:
            raise UserError(f"cannot resume from {paths.last} / {paths.state} ({exc}); "
                            "run again without --resume to start over") from exc
        meta = read_meta(paths.last)
        if meta is not None:
            attach_meta(network, meta)
        say(f"resuming from {paths.last} after epoch {state.epoch}")
        return network, state
    if opts.resume:
        say(f"--resume: no checkpoint at {paths.last}; starting fresh")
    feature_model, _ = feature_model_from_provenance(source.provenance, weights=opts.weights)
    augment = augmentation_layers(opts.augment, opts.seed) if opts.augment else None
    return build_network(feature_model, source.spec, source.class_names, augment=augment,
                         info=source.info), None


def _check_transplant(network, opts: FinetuneOptions, source: Source, say) -> dict | None:
    """Before any training step: does the network reproduce the head on a sample of the test
    images (val when there is no test split)?"""
    if opts.head_init != "head":
        return None
    rows = source.rows["test"] if len(source.rows["test"]) else source.rows["val"]
    n = min(opts.check_samples, len(rows))
    sample = rows[np.linspace(0, len(rows) - 1, n).astype(int)] if n else rows
    reference = source.head.predict_proba or (lambda X: apply_spec(source.spec, X))
    check = transplant_check(network, source.cache, np.unique(sample), source.data_dir,
                             reference, source.layers)
    if not check["n"]:
        say("transplant check skipped: the cache has no test or val images to compare on")
        return None
    say(f"transplant check on {check['n']} test images: agreement "
        f"{100 * check['agreement']:.2f}% of argmax, max |prob diff| "
        f"{check['max_abs_prob_diff']:.2e}")
    if check["agreement"] < 0.995 or check["max_abs_prob_diff"] > 1e-3:
        say("  WARNING: the transplanted network does not reproduce the head "
            "(needs >= 99.5% agreement and <= 1e-3); check --data and --weights")
    return check


def _datasets(opts: FinetuneOptions, source: Source) -> Data:
    """The split streams; train repeated with a fixed number of steps, so each epoch sees every
    train image once (a fresh shuffle per pass) and Keras does not warn about running out."""
    from bottleneck.data.images import labelled_dataset

    cache, rows = source.cache, source.rows
    files = [os.path.join(source.data_dir, p) for p in cache.paths]

    def split(name, shuffle=False, keep_decoded=False):
        r = rows[name]
        return labelled_dataset([files[i] for i in r], cache.labels[r],
                                source.provenance.image_size, opts.batch_size, shuffle=shuffle,
                                seed=opts.seed, cache=keep_decoded)

    return Data(train=split("train", shuffle=True).repeat(),
                val=split("val", keep_decoded=True) if len(rows["val"]) else None,
                test=split("test") if len(rows["test"]) else None,
                steps=int(np.ceil(len(rows["train"]) / opts.batch_size)),
                class_weight=balanced_class_weight(cache.labels[rows["train"]])
                if opts.class_weight == "balanced" else None)


def _find_lr(network, opts: FinetuneOptions, data: Data, unfreeze: int, scales, say) -> dict:
    """--find-lr: the learning-rate finder on the train split, with the layers that fine-tuning
    trains; writes its curve into the report and stops (nothing is trained or saved)."""
    from bottleneck.finetune.lr_find import find_lr

    set_trainable(network, unfreeze)
    compile_network(network, opts.optimizer, opts.lr, opts.label_smoothing, scales)
    found = find_lr(network, data.train, min(100, max(20, 2 * data.steps)), opts.paths.report,
                    say)
    return {"route": opts.head_init, "lr_find": found, "report": opts.paths.report}


def _start(network, opts: FinetuneOptions, source: Source, data: Data, unfreeze: int,
           check: dict | None, say, scales: dict | None = None) -> TrainState:
    """Compile for the first phase; score the transplanted network, which is epoch 0: training
    must beat it on val to replace it as the saved model."""
    warmup_lr = opts.warmup_lr or 10 * opts.lr
    set_trainable(network, None if opts.warmup else unfreeze)
    compile_network(network, opts.optimizer, warmup_lr if opts.warmup else opts.lr,
                    opts.label_smoothing, None if opts.warmup else scales)
    initial = {}
    if opts.head_init == "head":
        for name, dataset in (("val", data.val), ("test", data.test)):
            if dataset is not None:
                initial[f"{name}_accuracy"] = evaluate(network, dataset)[1]
        if initial:
            say("before training: " + ", ".join(f"{k} {v:.4f}" for k, v in initial.items()))
    state = TrainState(initial=initial, transplant=check)
    if opts.head_init == "head" and data.val is not None:
        loss, accuracy = evaluate(network, data.val)
        state.best_score, state.best_epoch = [accuracy, -loss], 0
        save_network(inference_model(network), opts.paths.best)
    return state


def _summary(opts: FinetuneOptions, source: Source, state: TrainState, stopped, averaged,
             unfrozen: str) -> dict:
    check = state.transplant
    result = {
        "model": opts.paths.best, "route": opts.head_init, "from_head": source.info["from_head"],
        "head_kind": source.info["head_kind"], "backbone": source.provenance.backbone,
        "image_size": source.provenance.image_size,
        "transplant_agreement": None if check is None else check["agreement"],
        "transplant_max_abs_prob_diff": None if check is None else check["max_abs_prob_diff"],
        "transplant_n": None if check is None else check["n"],
        "initial": state.initial, "epochs": state.history,
        "best_epoch": state.best_epoch, "stopped": stopped,
        "train_seconds": round(state.seconds, 2), "averaged": averaged,
        "selected": "average" if averaged else "best val epoch", "unfreeze_from": unfrozen,
        "warmup_epochs": opts.warmup, "split": {k: int(len(v)) for k, v in source.rows.items()},
        "report": opts.paths.report,
    }
    if source.head is not None and source.head.scores:
        result["head_scores"] = source.head.scores
    return result


def _score_test(opts: FinetuneOptions, source: Source, data: Data, result: dict, say) -> dict:
    """The saved model (best epoch, or the average) scored once on the test split."""
    from bottleneck.finetune.report import write_report
    from features.tf import keras

    if data.test is None:
        return {"test_accuracy": None}
    best = keras.saving.load_model(opts.paths.best, compile=False)
    probs = best.predict(data.test, verbose=0)
    y = source.cache.labels[source.rows["test"]]
    if len(probs) != len(y):  # an image became unreadable since extraction
        raise UserError(f"{len(y) - len(probs)} test image(s) could not be read; check --data")
    scores = write_report(opts.paths.report, y, probs, source.class_names, extra={
        k: result[k] for k in ("route", "head_kind", "transplant_agreement", "best_epoch",
                               "selected", "averaged", "initial", "model")},
        paths=[source.cache.paths[i] for i in source.rows["test"]], data_dir=source.data_dir)
    averaged = result["averaged"]
    chosen = (f"weights averaged over epochs {averaged['epochs'][0]}-{averaged['epochs'][-1]}"
              if averaged else f"best epoch {result['best_epoch']}")
    say(f"test accuracy {scores['test_accuracy']:.4f} ({chosen}; before training "
        f"{result['initial'].get('test_accuracy', float('nan')):.4f})")
    return scores

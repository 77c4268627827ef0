"""The learning-rate finder (`finetune --find-lr`), after fastai's `lr_find` (Smith 2015).

On the train split only (never val or test): one short run whose learning rate grows
exponentially from 1e-7 to 1 step by step, recording the smoothed training loss, until the loss
passes four times its best. The weights and optimizer are put back afterwards. The suggestion is
the learning rate at the smoothed loss's minimum divided by ten (fastai's classic rule; the
steepest descent is reported too); the curve goes into the report as lr_find.png/json.
"""

from __future__ import annotations

import math

import numpy as np


def lr_range_test(model, dataset, steps: int, start: float = 1e-7, end: float = 1.0,
                  beta: float = 0.98) -> dict:
    """Train `model` (compiled) for up to `steps` batches of `dataset` at exponentially growing
    learning rates; returns {'lr': [...], 'loss': [...] (smoothed), 'raw': [...]}. The model's
    weights are restored; its optimizer state is not (recompile before training)."""
    weights = model.get_weights()
    lrs, smoothed, raw = [], [], []
    average, best = 0.0, math.inf
    try:
        for i, (x, y) in enumerate(dataset.take(steps)):
            lr = start * (end / start) ** (i / max(1, steps - 1))
            model.optimizer.learning_rate.assign(lr)
            loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
            average = beta * average + (1 - beta) * loss
            value = average / (1 - beta ** (i + 1))
            lrs.append(lr)
            raw.append(loss)
            smoothed.append(value)
            if not math.isfinite(value) or value > 4 * best:
                break
            best = min(best, value)
    finally:
        model.set_weights(weights)
    return {"lr": lrs, "loss": smoothed, "raw": raw}


def suggest(curve: dict) -> dict:
    """{'min_over_10', 'steepest'}: the lr at the smoothed loss's minimum / 10, and the lr where
    the smoothed loss falls fastest (per log-lr), both over the finite part of the curve."""
    lr, loss = np.asarray(curve["lr"]), np.asarray(curve["loss"])
    keep = np.isfinite(loss)
    lr, loss = lr[keep], loss[keep]
    if len(lr) < 3:
        return {"min_over_10": None, "steepest": None}
    at_min = int(np.argmin(loss))
    slope = np.gradient(loss[:at_min + 1], np.log(lr[:at_min + 1])) if at_min >= 2 else None
    steep = float(lr[int(np.argmin(slope))]) if slope is not None else None
    return {"min_over_10": float(lr[at_min] / 10), "steepest": steep}


def plot_lr_curve(path: str, curve: dict, suggestion: dict) -> None:
    """Smoothed training loss against the learning rate (log axis), the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from features.reports.metrics import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(curve["lr"], curve["loss"], "-", label="train loss (smoothed)")
    if suggestion.get("min_over_10"):
        ax.axvline(suggestion["min_over_10"], color="C1", ls="--",
                   label=f"suggested {suggestion['min_over_10']:.1e} (min / 10)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("learning-rate finder (train split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def find_lr(model, dataset, steps: int, report_dir: str, say) -> dict:
    """Run the range test, write lr_find.png and lr_find.json into `report_dir`, say the
    suggestion; returns the curve and the suggestion."""
    import os

    from features.atomic import write_json

    curve = lr_range_test(model, dataset, steps)
    suggestion = suggest(curve)
    result = {**curve, "suggestion": suggestion, "steps": len(curve["lr"]),
              "plot": os.path.join(report_dir, "lr_find.png")}
    plot_lr_curve(result["plot"], curve, suggestion)
    write_json(os.path.join(report_dir, "lr_find.json"), result, indent=1)
    shown = {k: f"{v:.1e}" if v else "n/a" for k, v in suggestion.items()}
    say(f"lr finder: {len(curve['lr'])} train steps from {curve['lr'][0]:.0e} to "
        f"{curve['lr'][-1]:.1e}; suggested --lr {shown['min_over_10']} (minimum / 10; steepest "
        f"descent at {shown['steepest']}); curve in {result['plot']}")
    return result

"""Reports of a fine-tuned network: stage 2's test report (features/reports/metrics.py, mistakes
gallery included) and training curves."""

from __future__ import annotations

import numpy as np


def write_report(directory: str, y_true, probs, class_names, extra: dict | None = None, *,
                 paths=None, data_dir: str = "") -> dict:
    """Stage 2's report files (features/reports/metrics.py: metrics.json, classification_report.txt,
    confusion_matrix.png, and with the test images' `paths` relative to `data_dir` the mistakes
    gallery, mistakes.html) for the network; returns {'test_accuracy', 'test_metrics'}."""
    from features.reports.metrics import classification_text, test_metrics
    from features.reports.metrics import write_report as write_stage2
    from features.reports.mistakes import gallery_data

    metrics = test_metrics(y_true, probs, class_names)
    gallery = None if paths is None else gallery_data(y_true, probs, class_names, paths=paths,
                                                      data_dir=data_dir)
    write_stage2(directory, metrics=metrics, cv={}, text=classification_text(y_true, probs,
                                                                            class_names),
                 class_names=class_names, head=extra or {}, title="fine-tuned network",
                 gallery=gallery)
    return {"test_accuracy": metrics["accuracy"], "test_metrics": metrics}


def plot_curves(path: str, history: list[dict]) -> None:
    """Loss and accuracy per epoch, train and val, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from features.reports.metrics import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [row["epoch"] for row in history]
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [row[key] for row in history], "o-", label="train")
        val = [row.get(f"val_{key}") for row in history]
        if any(v is not None for v in val):
            ax.plot(epochs, [np.nan if v is None else v for v in val], "o-", label="val")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)

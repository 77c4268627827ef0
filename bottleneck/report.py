"""Reports of a fine-tuned network: stage 2's test report (features/report.py) and training curves.

Where stage 2 is not installed, a small local report writes the same file names."""

from __future__ import annotations

import json
import os

import numpy as np


def write_report(directory: str, y_true, probs, class_names, extra: dict | None = None) -> dict:
    """Stage 2's report files (features/report.py: metrics.json, classification_report.txt,
    confusion_matrix.png) for the network; returns {'test_accuracy', 'test_metrics'}."""
    try:
        from features.report import classification_text, test_metrics
        from features.report import write_report as write_stage2
    except ImportError:  # stage 2 absent: the small local version below
        return _write_report_local(directory, y_true, probs, class_names, extra)
    metrics = test_metrics(y_true, probs, class_names)
    write_stage2(directory, metrics=metrics, cv={}, text=classification_text(y_true, probs,
                                                                            class_names),
                 class_names=class_names, head=extra or {}, title="fine-tuned network")
    return {"test_accuracy": metrics["accuracy"], "test_metrics": metrics}


def _write_report_local(directory: str, y_true, probs, class_names, extra: dict | None = None):
    """Write the report files; return {'test_accuracy', 'macro_f1', 'per_class', 'confusion'}."""
    from sklearn.metrics import classification_report, confusion_matrix, f1_score

    os.makedirs(directory, exist_ok=True)
    y_true = np.asarray(y_true)
    y_pred = np.asarray(probs).argmax(1)
    labels = list(range(len(class_names)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    text = classification_report(y_true, y_pred, labels=labels, target_names=class_names,
                                 digits=4, zero_division=0)
    per_class = classification_report(y_true, y_pred, labels=labels, target_names=class_names,
                                      output_dict=True, zero_division=0)
    metrics = {"test_accuracy": float(np.mean(y_true == y_pred)),
               "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                          zero_division=0)),
               "n_test": int(len(y_true)), "class_names": list(class_names),
               "confusion": cm.tolist(),
               "per_class": {c: {k: float(v) for k, v in per_class[c].items()}
                             for c in class_names}}
    with open(os.path.join(directory, "metrics.json"), "w") as handle:
        json.dump({**metrics, **(extra or {})}, handle, indent=1, default=str)
    with open(os.path.join(directory, "classification_report.txt"), "w") as handle:
        handle.write(text)
    plot_confusion(os.path.join(directory, "confusion_matrix.png"), cm, class_names)
    return {"test_accuracy": metrics["test_accuracy"], "test_metrics": metrics}


def plot_confusion(path: str, cm, class_names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i][j] > np.max(cm) / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(path: str, history: list[dict]) -> None:
    """Loss and accuracy per epoch, train and val, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=100)
    plt.close(fig)

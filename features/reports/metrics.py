"""Scores and reports of a head on the cache's test split: metrics.json, text report, confusion PNG,
and the mistakes gallery (features/reports/mistakes.py)."""

from __future__ import annotations

import os

import numpy as np

from features.atomic import atomic_path, write_json, write_text


def test_metrics(y_true, proba, class_names, *, top_k=(1, 3)) -> dict:
    """Accuracy, balanced accuracy, macro F1, top-k and per-class figures from probabilities."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    labels = np.arange(len(class_names))
    y_pred = np.argmax(proba, axis=1)
    order = np.argsort(-proba, axis=1)
    topk = {}
    for k in sorted(set(int(k) for k in top_k)):
        if 1 <= k <= len(class_names):
            topk[f"top{k}"] = float(np.mean([t in row[:k] for t, row in zip(y_true, order)]))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "top_k": topk,
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def classification_text(y_true, proba, class_names) -> str:
    from sklearn.metrics import classification_report

    return classification_report(y_true, np.argmax(proba, axis=1),
                                 labels=np.arange(len(class_names)), target_names=class_names,
                                 digits=3, zero_division=0)


def save_confusion_png(path: str, matrix, class_names, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    size = max(4.0, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > top / 2 else "black")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def save_figure(fig, path: str) -> None:
    """A matplotlib figure as a PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_report(directory: str, *, metrics: dict, cv: dict, text: str, class_names, head: dict,
                 title: str = "", gallery: dict | None = None) -> dict:
    """Write metrics.json, classification_report.txt and confusion_matrix.png; with `gallery`
    (features.reports.mistakes.gallery_data) also its keys in metrics.json and mistakes.html, the
    test images most confidently wrong and the most-confused pairs. Returns the files' paths."""
    os.makedirs(directory, exist_ok=True)
    files = {"metrics": os.path.join(directory, "metrics.json"),
             "classification_report": os.path.join(directory, "classification_report.txt"),
             "confusion_matrix": os.path.join(directory, "confusion_matrix.png")}
    payload = {**metrics, "cv": cv, "class_names": list(class_names), "head": head,
               **(gallery or {})}
    write_json(files["metrics"], payload, indent=2, default=str)
    write_text(files["classification_report"], text)
    save_confusion_png(files["confusion_matrix"], metrics["confusion_matrix"], class_names, title)
    if gallery is not None:
        from features.reports.mistakes import render_page

        files["mistakes"] = os.path.join(directory, "mistakes.html")
        write_text(files["mistakes"], render_page(gallery, f"Mistakes: {title or 'test split'}"))
    return files

"""Training of the MLP head: scikit-learn's MLPClassifier (Dense(relu) -> softmax, Adam, L2, Glorot
init), one epoch per `partial_fit`, early stopping on the loss of a given validation set (the
cache's val split) with the best epoch's weights kept.

MLPClassifier's own early stopping holds out a fraction of the training rows and watches their
accuracy; the head needs the cache's val split instead (and whole images held out when rows are
augmented views, which NumpyMLP picks), so the epochs are driven here. The result is plain numpy
arrays: prediction and the transplant onto the network need neither scikit-learn's model nor
TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MLPSettings:
    hidden: int = 256
    dropout: float = 0.0          # MLPClassifier has no dropout: 0 is the only value it trains
    learning_rate: float = 5e-3
    l2: float = 1e-4              # Keras's convention: + l2 * sum(W^2) on the mean batch loss
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 3


@dataclass
class MLPResult:
    weights: list          # [W1, b1, W2, b2], float32; binary problems as two logits [0, z]
    n_epochs: int
    best_epoch: int


def forward(weights, X) -> np.ndarray:
    """Logits of X."""
    w1, b1, w2, b2 = weights
    return np.maximum(X @ w1 + b1, 0.0) @ w2 + b2


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _val_loss(params, X_val, yv_index) -> float:
    log_p = _log_softmax(forward(params, X_val))
    return float(-np.mean(log_p[np.arange(len(yv_index)), yv_index]))


def classifier(settings: MLPSettings, n_rows: int, seed: int):
    """The MLPClassifier of `settings`. Its L2 term is alpha / (2 n_batch) * sum(W^2) on the mean
    batch loss, so alpha = 2 * l2 * batch keeps Keras's `l2` meaning. A RandomState instance (not
    the int seed, which each partial_fit would re-seed) gives every epoch its own shuffle."""
    from sklearn.neural_network import MLPClassifier

    batch = int(min(settings.batch_size, n_rows))
    return MLPClassifier((settings.hidden,), alpha=2.0 * settings.l2 * batch, batch_size=batch,
                         learning_rate_init=settings.learning_rate, epsilon=1e-7,
                         random_state=np.random.RandomState(seed))


def weights_of(model, n_classes: int) -> list:
    """[W1, b1, W2, b2] (float32 copies: the model's own arrays change in place as it trains) of
    a fitted MLPClassifier whose softmax(forward) equals its predict_proba: a binary model's one
    logistic output z becomes the logits [0, z]."""
    (w1, w2), (b1, b2) = model.coefs_, model.intercepts_
    if n_classes == 2 and w2.shape[1] == 1:
        w2 = np.hstack([np.zeros_like(w2), w2])
        b2 = np.concatenate([np.zeros_like(b2), b2])
    return [np.array(a, np.float32) for a in (w1, b1, w2, b2)]


def train_mlp(X, y_index, X_val, yv_index, n_classes: int, settings: MLPSettings,
              class_weight=None, seed: int = 0) -> MLPResult:
    """One MLPClassifier epoch at a time; stops when the val loss has not improved for `patience`
    epochs and returns the weights of the best epoch. `class_weight`: per-class weights or None."""
    from features.errors import UserError

    if settings.dropout:
        raise UserError(f"MLP dropout {settings.dropout:g}: the MLP head trains with scikit-learn's "
                        "MLPClassifier, which has no dropout (an MLP head fitted with dropout by "
                        "an earlier version predicts as before, but cannot be refitted): fit a "
                        "new one with `python cli.py fit-mlp`, regularised by --l2")
    X, X_val = np.asarray(X, np.float32), np.asarray(X_val, np.float32)
    model = classifier(settings, len(X), seed)
    row_weight = None if class_weight is None else np.asarray(class_weight, np.float64)[y_index]
    classes = np.arange(n_classes)
    best, best_epoch, best_params, epoch = np.inf, 0, None, 0
    for epoch in range(1, settings.max_epochs + 1):
        model.partial_fit(X, y_index, sample_weight=row_weight, classes=classes)
        params = weights_of(model, n_classes)
        loss = _val_loss(params, X_val, yv_index)
        if loss < best:
            best, best_epoch, best_params = loss, epoch, params
        elif epoch - best_epoch >= settings.patience:
            break
    return MLPResult(best_params, epoch, best_epoch)

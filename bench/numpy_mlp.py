"""The numpy trainer of the MLP head until it moved to scikit-learn's MLPClassifier
(features/heads/mlp.py), kept as the peer of bench/mlp.py's side by side.

Training of the MLP head in numpy: Dense(relu) -> Dropout -> Dense(softmax), Adam, L2 on the
kernels, early stopping on validation loss with the best epoch's weights kept.

The same model Keras would train (Glorot-uniform kernels, zero biases, Keras's Adam and L2
conventions), without importing TensorFlow: `fit` stays a few-second, CPU-only stage, and a
float32 numpy loop on one core per fold beats a framework's per-step overhead at this size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.heads.mlp import MLPResult, _log_softmax, _val_loss


@dataclass(frozen=True)
class MLPSettings:
    hidden: int = 256
    dropout: float = 0.5
    learning_rate: float = 5e-3
    l2: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 3


def _glorot(rng, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


class _Adam:
    """Keras's Adam (epsilon 1e-7) on a list of float32 arrays, updated in place without
    temporaries (the update of the first layer's kernel is half the cost of a step)."""

    def __init__(self, params, learning_rate: float):
        self.params, self.lr, self.t = params, learning_rate, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.buffers = [np.empty_like(p) for p in params]

    def step(self, grads) -> None:
        self.t += 1
        rate = np.float32(self.lr * np.sqrt(1 - 0.999**self.t) / (1 - 0.9**self.t))
        for p, g, m, v, buf in zip(self.params, grads, self.m, self.v, self.buffers):
            np.multiply(g, np.float32(0.1), out=buf)
            m *= np.float32(0.9)
            m += buf
            np.multiply(g, g, out=buf)
            buf *= np.float32(0.001)
            v *= np.float32(0.999)
            v += buf
            np.sqrt(v, out=buf)
            buf += np.float32(1e-7)
            np.divide(m, buf, out=buf)
            buf *= rate
            p -= buf


def _gradients(params, xb, onehot, weight, keep, settings: MLPSettings, rng):
    """Gradients of the weighted mean cross-entropy + L2 for one batch, with inverted dropout."""
    w1, b1, w2, b2 = params
    pre = xb @ w1 + b1
    mask = (rng.random(pre.shape, dtype=np.float32) < keep) * np.float32(1.0 / keep)
    hidden = np.maximum(pre, 0.0) * mask
    proba = np.exp(_log_softmax(hidden @ w2 + b2))
    g_out = (proba - onehot) * (weight / weight.sum())[:, None]
    g_hidden = (g_out @ w2.T) * mask * (pre > 0)
    l2 = np.float32(2 * settings.l2)
    return [xb.T @ g_hidden + l2 * w1, g_hidden.sum(axis=0), hidden.T @ g_out + l2 * w2,
            g_out.sum(axis=0)]


def train_mlp(X, y_index, X_val, yv_index, n_classes: int, settings: MLPSettings,
              class_weight=None, seed: int = 0) -> MLPResult:
    """Adam on shuffled mini-batches; stops when the val loss has not improved for `patience`
    epochs and returns the weights of the best epoch. `class_weight`: per-class weights or None."""
    rng = np.random.default_rng(seed)
    X, X_val = np.asarray(X, np.float32), np.asarray(X_val, np.float32)
    params = [_glorot(rng, X.shape[1], settings.hidden), np.zeros(settings.hidden, np.float32),
              _glorot(rng, settings.hidden, n_classes), np.zeros(n_classes, np.float32)]
    adam = _Adam(params, settings.learning_rate)
    onehot = np.eye(n_classes, dtype=np.float32)[y_index]
    row_weight = (np.ones(len(X), np.float32) if class_weight is None
                  else np.asarray(class_weight, np.float32)[y_index])
    best, best_epoch, best_params, epoch = np.inf, 0, [p.copy() for p in params], 0
    for epoch in range(1, settings.max_epochs + 1):
        order = rng.permutation(len(X))
        for start in range(0, len(X), settings.batch_size):
            rows = np.sort(order[start:start + settings.batch_size])
            adam.step(_gradients(params, X[rows], onehot[rows], row_weight[rows],
                                 1.0 - settings.dropout, settings, rng))
        loss = _val_loss(params, X_val, yv_index)
        if loss < best:
            best, best_epoch, best_params = loss, epoch, [p.copy() for p in params]
        elif epoch - best_epoch >= settings.patience:
            break
    return MLPResult(best_params, epoch, best_epoch)

"""A fitted head as a layer spec: numpy ops on the flattened, concatenated features that
reproduce its predict_proba exactly, so finetune can rebuild it as Keras layers."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from features.errors import UserError
from features.heads.estimators import NumpyMLP, SoftmaxLinearMixin, softmax

NOT_EXPRESSIBLE = ("--head-init random, or refit a linear head with fit-svm/fit-logistic "
                   "(or an MLP head with fit-mlp)")


def head_layer_spec(pipeline) -> list[dict]:
    """Express a fitted head as numpy ops on the flattened, concatenated features.

    Ops: {"op": "l2"} (x / max(||x||, 1e-12) row-wise) and {"op": "dense", "kernel": float32
    (d_in, d_out), "bias": float32 (d_out,), "activation": "linear" | "relu" | "softmax"}.
    StandardScaler and PCA (whiten too) are folded into the next dense kernel/bias. Kernel SVMs
    cannot be expressed: UserError naming the alternatives.
    """
    steps = list(pipeline.steps) if isinstance(pipeline, Pipeline) else [("clf", pipeline)]
    spec = _Spec()
    for _, step in steps:
        if step is None or step == "passthrough":
            continue
        if isinstance(step, Normalizer):
            if step.norm != "l2":
                raise UserError(f"Normalizer(norm={step.norm!r}) cannot be expressed; use l2")
            spec.l2()
        elif isinstance(step, (StandardScaler, PCA)):
            spec.compose(*_affine(step))
        else:
            for kernel, bias, activation in _dense_layers(step):
                spec.dense(kernel, bias, activation)
    if not spec.ops or spec.ops[-1]["op"] != "dense" or spec.ops[-1]["activation"] != "softmax":
        raise UserError("this pipeline has no classifier step that can be expressed as layers; "
                        f"use {NOT_EXPRESSIBLE}")
    return spec.ops


class _Spec:
    """The ops so far, and an affine map x -> x @ M + c waiting to fold into the next dense."""

    def __init__(self):
        self.ops: list[dict] = []
        self.affine = None

    def compose(self, m, c) -> None:
        if self.affine is None:
            self.affine = (m, c)
        else:
            m0, c0 = self.affine
            self.affine = (m0 @ m, c0 @ m + c)

    def dense(self, kernel, bias, activation: str) -> None:
        kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
        if self.affine is not None:
            m, c = self.affine
            kernel, bias = m @ kernel, c @ kernel + bias
            self.affine = None
        self.ops.append({"op": "dense", "kernel": kernel.astype(np.float32),
                         "bias": bias.astype(np.float32), "activation": activation})

    def l2(self) -> None:
        if self.affine is not None:   # an affine map before the norm becomes its own layer
            width = self.affine[0].shape[1]
            self.dense(np.eye(width), np.zeros(width), "linear")
        self.ops.append({"op": "l2"})


def _affine(step):
    """(M, c) of a fitted StandardScaler or PCA (whitened too): x -> x @ M + c."""
    if isinstance(step, StandardScaler):
        d = step.n_features_in_
        mean = step.mean_ if step.with_mean and step.mean_ is not None else np.zeros(d)
        scale = step.scale_ if step.with_std and step.scale_ is not None else np.ones(d)
        inv = 1.0 / np.asarray(scale, np.float64)
        return np.diag(inv), -np.asarray(mean, np.float64) * inv
    comp = np.asarray(step.components_, np.float64)
    m, c = comp.T, -np.asarray(step.mean_, np.float64) @ comp.T
    if step.whiten:
        s = 1.0 / np.sqrt(np.asarray(step.explained_variance_, np.float64))
        m, c = m * s, c * s
    return m, c


def _dense_layers(step) -> list[tuple]:
    """[(kernel, bias, activation)] of a classifier step; UserError when it has no such form."""
    if isinstance(step, SoftmaxLinearMixin):
        return [(*step.linear_params(), "softmax")]
    if _is_logistic(step):
        coef = np.asarray(step.coef_, np.float64)
        intercept = np.asarray(step.intercept_, np.float64).reshape(-1)
        if coef.shape[0] == 1:   # binary: logits [0, z]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        return [(coef.T, intercept, "softmax")]
    if isinstance(step, NumpyMLP):
        w1, b1, w2, b2 = step.weights_
        return [(w1, b1, "relu"), (w2, b2, "softmax")]
    raise UserError(f"a {type(step).__name__} head cannot be expressed as network layers; "
                    f"use {NOT_EXPRESSIBLE}")


def _is_logistic(step) -> bool:
    from sklearn.linear_model import LogisticRegression

    return isinstance(step, LogisticRegression)


def apply_layer_spec(spec: list[dict], X) -> np.ndarray:
    """Numpy reference of a layer spec: probabilities for features X (n, d)."""
    x = np.asarray(X, dtype=np.float64)
    x = x.reshape(len(x), -1)
    for op in spec:
        if op["op"] == "l2":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        elif op["op"] == "dense":
            x = x @ np.asarray(op["kernel"], np.float64) + np.asarray(op["bias"], np.float64)
            if op["activation"] == "relu":
                x = np.maximum(x, 0.0)
            elif op["activation"] == "softmax":
                x = softmax(x)
            elif op["activation"] != "linear":
                raise ValueError(f"unknown activation {op['activation']!r}")
        else:
            raise ValueError(f"unknown op {op['op']!r}")
    return x

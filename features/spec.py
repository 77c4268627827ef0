"""A fitted head as a layer spec: numpy ops on the flattened, concatenated features that
reproduce its predict_proba exactly, so finetune can rebuild it as Keras layers."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from features.errors import UserError
from features.estimators import NumpyMLP, SoftmaxLinearMixin, softmax

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
    spec: list[dict] = []
    affine = None   # (M, c): x -> x @ M + c, pending to be folded into the next dense layer

    def compose(m, c):
        nonlocal affine
        if affine is None:
            affine = (m, c)
        else:
            m0, c0 = affine
            affine = (m0 @ m, c0 @ m + c)

    def dense(kernel, bias, activation):
        nonlocal affine
        kernel = np.asarray(kernel, np.float64)
        bias = np.asarray(bias, np.float64)
        if affine is not None:
            m, c = affine
            kernel, bias = m @ kernel, c @ kernel + bias
            affine = None
        spec.append({"op": "dense", "kernel": kernel.astype(np.float32),
                     "bias": bias.astype(np.float32), "activation": activation})

    for name, step in steps:
        if step is None or step == "passthrough":
            continue
        if isinstance(step, Normalizer):
            if step.norm != "l2":
                raise UserError(f"Normalizer(norm={step.norm!r}) cannot be expressed; use l2")
            if affine is not None:
                dense(np.eye(affine[0].shape[1]), np.zeros(affine[0].shape[1]), "linear")
            spec.append({"op": "l2"})
        elif isinstance(step, StandardScaler):
            d = step.n_features_in_
            mean = step.mean_ if step.with_mean and step.mean_ is not None else np.zeros(d)
            scale = step.scale_ if step.with_std and step.scale_ is not None else np.ones(d)
            inv = 1.0 / np.asarray(scale, np.float64)
            compose(np.diag(inv), -np.asarray(mean, np.float64) * inv)
        elif isinstance(step, PCA):
            comp = np.asarray(step.components_, np.float64)
            m = comp.T
            c = -np.asarray(step.mean_, np.float64) @ comp.T
            if step.whiten:
                s = 1.0 / np.sqrt(np.asarray(step.explained_variance_, np.float64))
                m, c = m * s, c * s
            compose(m, c)
        elif isinstance(step, SoftmaxLinearMixin):
            dense(*step.linear_params(), "softmax")
        elif _is_logistic(step):
            coef = np.asarray(step.coef_, np.float64)
            intercept = np.asarray(step.intercept_, np.float64).reshape(-1)
            if coef.shape[0] == 1:
                coef = np.vstack([np.zeros_like(coef), coef])
                intercept = np.concatenate([[0.0], intercept])
            dense(coef.T, intercept, "softmax")
        elif isinstance(step, NumpyMLP):
            w1, b1, w2, b2 = step.weights_
            dense(w1, b1, "relu")
            dense(w2, b2, "softmax")
        else:
            raise UserError(f"a {type(step).__name__} head cannot be expressed as network layers; "
                            f"use {NOT_EXPRESSIBLE}")
    if not spec or spec[-1]["op"] != "dense" or spec[-1]["activation"] != "softmax":
        raise UserError("this pipeline has no classifier step that can be expressed as layers; "
                        f"use {NOT_EXPRESSIBLE}")
    return spec


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

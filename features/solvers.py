"""Preconditioned L-BFGS for the two linear heads: multinomial logistic regression and the
one-vs-rest squared-hinge SVM (the objectives of scikit-learn's LogisticRegression and LinearSVC).

Why not those classes: on CNN features, whose columns are strongly correlated, their solvers need
hundreds to thousands of iterations per fit, and LinearSVC copies float32 data to float64. The
objectives are the same; the optimiser is scipy's L-BFGS on the weights in a preconditioned basis
W = P V, where P ~ (a X'X/n + mu I)^(-1/2) is built from the top singular vectors of X (a
randomised SVD). A preconditioner changes the path, never the minimum. The data stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRECONDITIONER_RANK = 128
PRECONDITIONER_ROWS = 8_192   # rows of X the randomised SVD looks at (a preconditioner is approximate)


@dataclass(frozen=True)
class Standardized:
    """Rows of a float32 matrix through a standard scaling, (X[rows] - mean) / scale, never made
    whole: the solvers read them a block at a time and fold the scaling into the weights, so a
    large training set is not copied (a scaled copy would double the memory of `fit`)."""

    X: np.ndarray
    rows: np.ndarray | None   # row numbers into X (None: every row, in order)
    mean: np.ndarray
    scale: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.X) if self.rows is None else len(self.rows), self.X.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def raw(self, block: slice) -> np.ndarray:
        """The unscaled rows of `block` (a view when rows is None, else a copy of the block)."""
        return self.X[block] if self.rows is None else self.X[self.rows[block]]

    def scaled(self, block: slice) -> np.ndarray:
        return ((self.raw(block) - self.mean) / self.scale).astype(np.float32)


def _affine(X):
    """(source, shift, inverse scale): X's rows are (source rows - shift) * inverse scale."""
    if isinstance(X, Standardized):
        return X, (X.mean / X.scale).astype(np.float64), (1.0 / X.scale).astype(np.float64)
    return X, 0.0, 1.0


def linear_decision(X, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """X @ coef.T + intercept for an array or a Standardized view, a block of rows at a time."""
    source, shift, inverse = _affine(X)
    w = (np.asarray(coef, np.float64).T * (np.ones(X.shape[1]) * inverse)[:, None])
    b = np.asarray(intercept, np.float64) - (np.ones(X.shape[1]) * shift) @ np.asarray(coef).T
    raw = source.raw if isinstance(source, Standardized) else source.__getitem__
    out = np.concatenate([raw(rows) @ w.astype(np.float32) + b for rows in _blocks(len(X))]
                         or [np.zeros((0, len(b)))])
    return out.ravel() if out.shape[1] == 1 else out


@dataclass(frozen=True)
class Preconditioner:
    """P = Q (D - t) Q' + t I: the top-r directions of X'X/n scaled by (a lam + mu)^(-1/2), the
    rest by t = (a lam_r + mu)^(-1/2), lam_r the smallest eigenvalue found."""

    basis: np.ndarray      # (d, r) orthonormal
    eigenvalues: np.ndarray   # (r,) of X'X / n, descending

    def scales(self, curvature: float, ridge: float):
        top = 1.0 / np.sqrt(curvature * self.eigenvalues + ridge)
        rest = 1.0 / np.sqrt(curvature * self.eigenvalues[-1] + ridge)
        return top - rest, rest

    @staticmethod
    def of(X: np.ndarray, random_state=0) -> "Preconditioner":
        from sklearn.utils.extmath import randomized_svd

        rng = np.random.default_rng(random_state)
        pick = (slice(None) if len(X) <= PRECONDITIONER_ROWS
                else np.sort(rng.choice(len(X), PRECONDITIONER_ROWS, replace=False)))
        rows = X.scaled(pick) if isinstance(X, Standardized) else X[pick]
        rank = max(1, min(PRECONDITIONER_RANK, min(rows.shape) - 1))
        _, s, vt = randomized_svd(np.asarray(rows, np.float32), rank, n_iter=3,
                                  random_state=random_state)
        return Preconditioner(np.ascontiguousarray(vt.T, dtype=np.float64), s**2 / len(rows))


BLOCK_ROWS = 8_192


def _blocks(n: int):
    return [slice(start, start + BLOCK_ROWS) for start in range(0, n, BLOCK_ROWS)]


@dataclass
class LinearFit:
    """The solution: coef (k', d) and intercept (k',), k' = 1 for two classes (logits [0, z])."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int


def _targets(y_index: np.ndarray, n_classes: int, loss: str) -> np.ndarray:
    """What the decision values are fitted to: +-1 per column (hinge; binary: class 1 only), or
    the one-hot matrix over all classes (logistic; binary logits are [0, z])."""
    onehot = np.eye(n_classes, dtype=np.float32)[y_index]
    if loss == "hinge":
        return (2.0 * onehot - 1.0)[:, 1:] if n_classes == 2 else 2.0 * onehot - 1.0
    return onehot


def _loss_and_grad_z(z: np.ndarray, target: np.ndarray, weight: np.ndarray, loss: str):
    """(sum_i w_i loss_i, its gradient with respect to the decision values z (n, k')). Works in
    z's precision (float32 in the solver: half the time of float64 on 100-class problems); the
    sum is accumulated in float64."""
    w = weight.astype(z.dtype)[:, None]
    if loss == "hinge":
        margin = np.maximum(0.0, 1.0 - target * z)
        return float(weight @ (margin**2).sum(axis=1, dtype=np.float64)), -2.0 * target * margin * w
    binary = z.shape[1] == 1 and target.shape[1] == 2
    logits = np.concatenate([np.zeros_like(z), z], axis=1) if binary else z
    shift = logits.max(axis=1, keepdims=True)
    log_proba = logits - shift - np.log(np.exp(logits - shift).sum(axis=1, keepdims=True))
    value = float(weight @ -(target * log_proba).sum(axis=1, dtype=np.float64))
    grad = (np.exp(log_proba) - target) * w
    return value, grad[:, 1:] if binary else grad


def fit_linear(X, y_index, n_classes: int, *, C: float, loss: str, sample_weight=None,
               preconditioner: Preconditioner | None = None, init: LinearFit | None = None,
               max_iter: int = 500, tol: float = 1e-6) -> LinearFit:
    """Minimise C * sum_i w_i loss_i + |W|^2 / 2 (intercept not penalised) over W, b.

    loss: "logistic" (multinomial cross-entropy; binary: the logistic loss) or "hinge" (squared
    hinge, one-vs-rest). Scaled by 1 / (C sum w) inside, which leaves the minimum unchanged.
    """
    from scipy.optimize import minimize

    X = X if isinstance(X, Standardized) else np.asarray(X)
    source, shift, inverse = _affine(X)
    raw = source.raw if isinstance(source, Standardized) else source.__getitem__
    n, d = X.shape
    weight = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    total = weight.sum()
    weight = weight / total
    ridge = 1.0 / (C * total)
    y_index = np.asarray(y_index)
    k = 1 if n_classes == 2 else n_classes
    pre = preconditioner or Preconditioner.of(X)
    gap, rest = pre.scales(1.0 if loss == "hinge" else 0.5, ridge)
    basis = pre.basis

    def precondition(v):   # P v for v (d, k); P is symmetric
        return basis @ (gap[:, None] * (basis.T @ v)) + rest * v

    def objective(params):
        v, b = params[:d * k].reshape(d, k), params[d * k:]
        w = precondition(v)
        value = 0.5 * ridge * float((w * w).sum())
        w_raw = (w * (np.ones(d) * inverse)[:, None]).astype(np.float32)   # the scaling, folded
        b_raw = (b - (np.ones(d) * shift) @ w).astype(np.float32)
        xt_g, g_sum = np.zeros((d, k)), np.zeros(k)
        for rows in _blocks(n):   # bounded memory: (block, k) temporaries, whatever n and k
            block = raw(rows)
            part, grad_z = _loss_and_grad_z(block @ w_raw + b_raw,
                                            _targets(y_index[rows], n_classes, loss),
                                            weight[rows], loss)
            value += part
            xt_g += block.T @ grad_z
            g_sum += grad_z.sum(axis=0, dtype=np.float64)
        grad_w = (np.ones(d) * inverse)[:, None] * xt_g - np.outer(np.ones(d) * shift, g_sum)
        return value, np.concatenate([precondition(grad_w + ridge * w).ravel(), g_sum])

    start = np.zeros(d * k + k)
    if init is not None:   # warm start: express the previous solution in the new basis
        inverse_gap = 1.0 / (gap + rest) - 1.0 / rest
        w0 = init.coef.T
        start[:d * k] = (basis @ (inverse_gap[:, None] * (basis.T @ w0)) + w0 / rest).ravel()
        start[d * k:] = init.intercept
    result = minimize(objective, start, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-10})
    v, b = result.x[:d * k].reshape(d, k), result.x[d * k:]
    return LinearFit(precondition(v).T.copy(), b.copy(), int(result.nfev))

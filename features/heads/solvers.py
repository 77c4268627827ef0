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
    out = np.concatenate([raw(rows) @ w.astype(np.float32) + b for rows in row_blocks(len(X))]
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
    def of(X, random_state=0) -> Preconditioner:
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


def row_blocks(n: int) -> list[slice]:
    """Slices of BLOCK_ROWS rows covering n rows: the unit of every block-at-a-time pass."""
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


class _Problem:
    """The scaled objective of fit_linear over params = [V (d x k) flattened, b (k)], with
    W = P V: its value and gradient, a block of rows at a time."""

    def __init__(self, X, y_index, n_classes, loss, weight, ridge, preconditioner):
        self.X, self.y_index, self.n_classes, self.loss = X, y_index, n_classes, loss
        self.weight, self.ridge = weight, ridge
        source, shift, inverse = _affine(X)
        self.raw = source.raw if isinstance(source, Standardized) else source.__getitem__
        self.n, self.d = X.shape
        self.shift, self.inverse = np.ones(self.d) * shift, np.ones(self.d) * inverse
        self.k = 1 if n_classes == 2 else n_classes
        self.gap, self.rest = preconditioner.scales(1.0 if loss == "hinge" else 0.5, ridge)
        self.basis = preconditioner.basis

    def precondition(self, v):   # P v for v (d, k); P is symmetric
        return self.basis @ (self.gap[:, None] * (self.basis.T @ v)) + self.rest * v

    def unprecondition(self, w):   # P^-1 w: the warm start's weights in the new basis
        inverse_gap = 1.0 / (self.gap + self.rest) - 1.0 / self.rest
        return self.basis @ (inverse_gap[:, None] * (self.basis.T @ w)) + w / self.rest

    def split(self, params):
        d, k = self.d, self.k
        return params[:d * k].reshape(d, k), params[d * k:]

    def __call__(self, params):
        v, b = self.split(params)
        w = self.precondition(v)
        value = 0.5 * self.ridge * float((w * w).sum())
        w_raw = (w * self.inverse[:, None]).astype(np.float32)   # the scaling, folded in
        b_raw = (b - self.shift @ w).astype(np.float32)
        xt_g, g_sum = np.zeros((self.d, self.k)), np.zeros(self.k)
        for rows in row_blocks(self.n):   # bounded memory: (block, k) temporaries
            block = self.raw(rows)
            part, grad_z = _loss_and_grad_z(
                block @ w_raw + b_raw, _targets(self.y_index[rows], self.n_classes, self.loss),
                self.weight[rows], self.loss)
            value += part
            xt_g += block.T @ grad_z
            g_sum += grad_z.sum(axis=0, dtype=np.float64)
        grad_w = self.inverse[:, None] * xt_g - np.outer(self.shift, g_sum) + self.ridge * w
        return value, np.concatenate([self.precondition(grad_w).ravel(), g_sum])


def fit_linear(X, y_index, n_classes: int, *, C: float, loss: str, sample_weight=None,
               preconditioner: Preconditioner | None = None, init: LinearFit | None = None,
               max_iter: int = 500, tol: float = 1e-6) -> LinearFit:
    """Minimise C * sum_i w_i loss_i + |W|^2 / 2 (intercept not penalised) over W, b.

    loss: "logistic" (multinomial cross-entropy; binary: the logistic loss) or "hinge" (squared
    hinge, one-vs-rest). X: a float32 array or a Standardized view. Scaled by 1 / (C sum w)
    inside, which leaves the minimum unchanged.
    """
    from scipy.optimize import minimize

    X = X if isinstance(X, Standardized) else np.asarray(X)
    weight = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    total = weight.sum()
    problem = _Problem(X, np.asarray(y_index), n_classes, loss, weight / total,
                       1.0 / (C * total), preconditioner or Preconditioner.of(X))
    start = np.zeros(problem.d * problem.k + problem.k)
    if init is not None:   # warm start from the previous C's solution
        start[:problem.d * problem.k] = problem.unprecondition(init.coef.T).ravel()
        start[problem.d * problem.k:] = init.intercept
    result = minimize(problem, start, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-10})
    v, b = problem.split(result.x)
    return LinearFit(problem.precondition(v).T.copy(), b.copy(), int(result.nfev))

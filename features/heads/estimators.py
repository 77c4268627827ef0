"""The custom scikit-learn classifiers behind the heads, and the cross-validation helpers they share.

Probabilities are DEFINED as:

* logistic: softmax of the logits (its own probabilities);
* linear SVM and SGD: softmax(temperature * decision_function), the temperature fitted by log-loss
  on cross-validated (SVM) or held-out (SGD) decision values (binary: logits [0, z]);
* MLP: Dense(hidden, relu) -> Dense(softmax), trained by scikit-learn's MLPClassifier
  (features/heads/mlp.py) and stored as numpy arrays;
* kernel SVM: softmax(temperature * one-vs-rest decision function), like the linear SVM (not
  expressible as layers).

Each follows scikit-learn's estimator contract (tests/test_estimator_checks.py).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def as_logits(decision: np.ndarray) -> np.ndarray:
    """(n, k) logits from a decision function: binary (n,) -> [0, z]."""
    decision = np.asarray(decision, dtype=np.float64)
    if decision.ndim == 1:
        return np.stack([np.zeros_like(decision), decision], axis=1)
    return decision


def fit_temperature(decision: np.ndarray, y_index: np.ndarray) -> float:
    """The T > 0 minimising the log-loss of softmax(T * logits) on held-out decision values."""
    from scipy.optimize import minimize_scalar

    logits = as_logits(decision)
    y_index = np.asarray(y_index)

    def loss(log_t):
        p = softmax(np.exp(log_t) * logits)
        return -np.mean(np.log(np.clip(p[np.arange(len(y_index)), y_index], 1e-15, None)))

    res = minimize_scalar(loss, bounds=(-7.0, 7.0), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def smallest_class(y_index, groups=None) -> int:
    """Images in the rarest class: rows, or distinct `groups` (images) when rows are views."""
    y_index = np.asarray(y_index)
    if groups is not None:
        y_index = y_index[np.unique(np.asarray(groups), return_index=True)[1]]
    return int(np.bincount(y_index).min()) if len(y_index) else 0


def stratified_folds(folds: int, random_state, groups=None):
    """Shuffled stratified k-fold; grouped (every view of an image in one fold) with `groups`."""
    kind = StratifiedKFold if groups is None else StratifiedGroupKFold
    return kind(folds, shuffle=True, random_state=random_state)


class FirstSplit:
    """Only the first split of a CV splitter: a stratified hold-out of 1/k of the rows."""

    def __init__(self, splitter):
        self.splitter = splitter

    def split(self, X, y=None, groups=None):
        yield next(iter(self.splitter.split(X, y, groups)))

    def get_n_splits(self, X=None, y=None, groups=None):
        return 1


def held_out_splitter(y_index, folds: int, random_state, groups=None):
    """Stratified folds, grouped when `groups` names the image of each row (augmented views), so
    no image is scored by a model that saw one of its views; None when a class has too few."""
    if folds < 2 or smallest_class(y_index, groups) < folds:
        return None
    return stratified_folds(folds, random_state, groups)


@contextlib.contextmanager
def quiet_convergence():
    """Silence scikit-learn's ConvergenceWarning: the iteration caps are deliberate, and the
    CV score, not the solver's tolerance, says whether a head is good."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def cv_temperature(make_svc, X, y, classes, folds, random_state, groups=None) -> float:
    """The softmax temperature of an SVM: fitted by log-loss on `folds`-fold cross-validated
    decision values of fresh `make_svc()` models, grouped by image when `groups` is given
    (1.0 when there are too few images)."""
    y_index = np.searchsorted(classes, y)
    cv = held_out_splitter(y_index, int(folds or 0), random_state, groups)
    if cv is None:
        return 1.0
    decision = np.zeros((len(y),) if len(classes) == 2 else (len(y), len(classes)))
    for fit_idx, held in cv.split(X, y, groups):
        decision[held] = make_svc().fit(X[fit_idx], y[fit_idx]).decision_function(X[held])
    return fit_temperature(decision, y_index)


def checked_input(estimator, X) -> np.ndarray:
    """X for a fitted estimator's predict-side method: sklearn's own checks (fitted, 2-D, finite,
    dense, the width it was fitted on)."""
    check_is_fitted(estimator)
    return validate_data(estimator, X, reset=False)


def checked_training_data(estimator, X, y):
    """(X, y) for fit: sklearn's own checks (2-D finite dense X, 1-D classification y, equal
    lengths); records n_features_in_."""
    X, y = validate_data(estimator, X, y)
    check_classification_targets(y)
    return X, y


class TemperedSoftmaxMixin:
    """predict_proba = softmax(temperature_ * logits(decision_function)); predict = its argmax."""

    def predict_proba(self, X):
        decision = self.decision_function(X)
        return softmax(self.temperature_ * as_logits(decision))

    def predict(self, X):
        decision = self.decision_function(X)
        return self.classes_[np.argmax(as_logits(decision), axis=1)]


class SoftmaxLinearMixin(TemperedSoftmaxMixin):
    """A tempered-softmax model that is linear, hence expressible as one Dense layer."""

    def decision_function(self, X):
        X = checked_input(self, X)
        out = np.asarray(X, dtype=np.float64) @ np.asarray(self.coef_).T + self.intercept_
        return out.ravel() if out.shape[1] == 1 else out

    def linear_params(self):
        """(kernel (d, k), bias (k,)) such that softmax(X @ kernel + bias) == predict_proba(X)."""
        coef = np.asarray(self.coef_, dtype=np.float64)
        intercept = np.asarray(self.intercept_, dtype=np.float64).reshape(-1)
        if coef.shape[0] == 1:   # binary: logits [0, z]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        return self.temperature_ * coef.T, self.temperature_ * intercept


class LinearSolverMixin(SoftmaxLinearMixin):
    """A linear head solved by features/heads/solvers.py: `loss` names the objective, `C` its
    strength, `class_weight` weights rows like scikit-learn's."""

    loss = "logistic"

    def solve(self, X, y, preconditioner=None, init=None):
        """Fit coef_ and intercept_ only (no temperature); `init` is an earlier `solution_` of
        the same data (warm start along a C grid). Returns self."""
        from sklearn.utils.class_weight import compute_sample_weight

        from features.heads.solvers import fit_linear

        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the "
                             f"data, but the data contains only one class: {self.classes_[0]!r}")
        weight = None if self.class_weight is None else compute_sample_weight(self.class_weight, y)
        self.solution_ = fit_linear(X, np.searchsorted(self.classes_, y), len(self.classes_),
                                    C=self.C, loss=self.loss, sample_weight=weight,
                                    preconditioner=preconditioner, init=init,
                                    max_iter=self.max_iter, tol=self.tol)
        self.coef_, self.intercept_ = self.solution_.coef, self.solution_.intercept
        self.n_iter_ = self.solution_.n_iter
        self.temperature_ = 1.0
        return self

    def fit_standardized(self, view, y, preconditioner=None):
        """Fit on a features.heads.solvers.Standardized view of a large training set (no scaled
        copy); a tempered head takes the `temperature` its search fitted."""
        self.solve(view, np.asarray(y), preconditioner)
        self.n_features_in_ = view.shape[1]
        if "temperature" in self.get_params():
            if self.temperature is None:
                raise ValueError("fit_standardized needs `temperature` set (from the search)")
            self.temperature_ = float(self.temperature)
        return self


class LinearLogistic(LinearSolverMixin, ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression (binary: the logistic loss), the objective of
    scikit-learn's LogisticRegression: C * sum of cross-entropies + |W|^2 / 2, intercept not
    penalised; predict_proba = softmax(X W + b), its own probabilities."""

    loss = "logistic"

    def __init__(self, C=1.0, class_weight=None, max_iter=500, tol=1e-4, random_state=0):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X, y, preconditioner=None):
        X, y = checked_training_data(self, X, y)
        return self.solve(np.asarray(X, np.float32), y, preconditioner)


class TemperedLinearSVC(LinearSolverMixin, ClassifierMixin, BaseEstimator):
    """A one-vs-rest linear SVM with the squared hinge (LinearSVC's objective, intercept not
    penalised), whose probabilities are softmax(T * decision_function). T is `temperature` when
    given (the search fits it on cross-validated decision values), else fitted by log-loss on
    `temperature_cv`-fold decision values (0: T = 1)."""

    loss = "hinge"
    tol, temperature = 1e-4, None   # defaults for heads pickled before these parameters existed

    def __init__(self, C=1.0, class_weight=None, max_iter=500, tol=1e-4, temperature=None,
                 temperature_cv=3, random_state=0):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.temperature = temperature
        self.temperature_cv = temperature_cv
        self.random_state = random_state

    def fit(self, X, y, groups=None, preconditioner=None):
        X, y = checked_training_data(self, X, y)
        X = np.asarray(X, np.float32)
        self.solve(X, y, preconditioner)
        self.temperature_ = fixed_or_cv_temperature(self, X, y, groups)
        return self


def fixed_or_cv_temperature(model, X, y, groups=None) -> float:
    """`model.temperature` when set, else the log-loss temperature of `temperature_cv`-fold
    decision values of clones that keep T = 1."""
    if model.temperature is not None:
        return float(model.temperature)
    from sklearn.base import clone

    def make():
        return clone(model).set_params(temperature=1.0)

    return cv_temperature(make, X, y, model.classes_, model.temperature_cv, model.random_state,
                          groups)


class TemperedKernelSVC(TemperedSoftmaxMixin, ClassifierMixin, BaseEstimator):
    """A kernel SVC (one-vs-rest decision function) whose probabilities are
    softmax(T * decision_function), T set like TemperedLinearSVC's. Not expressible as layers.

    The kernel matrix is computed with BLAS and handed to SVC(kernel="precomputed"): libsvm's own
    kernel evaluation is ~10x slower. `support_vectors_` keep what predictions need."""

    temperature = None   # the default for heads pickled before this parameter existed

    def __init__(self, kernel="rbf", C=1.0, gamma="scale", degree=3, class_weight=None,
                 temperature=None, temperature_cv=3, random_state=0):
        self.kernel = kernel
        self.C = C
        self.gamma = gamma
        self.degree = degree
        self.class_weight = class_weight
        self.temperature = temperature
        self.temperature_cv = temperature_cv
        self.random_state = random_state

    def gamma_for(self, X) -> float:
        """SVC's gamma: 'scale' is 1 / (n_features * X.var()), computed on the fitted rows."""
        if self.gamma != "scale":
            return float(self.gamma)
        variance = float(np.var(X, dtype=np.float64))
        return 1.0 / (X.shape[1] * variance) if variance > 0 else 1.0

    def kernel_matrix(self, X, Y, gamma: float) -> np.ndarray:
        """k(X, Y) as float64 (what libsvm takes), from one float32 matrix product: the error is
        ~1e-7 of the exponent on standardised features, far below what changes a decision."""
        X, Y = np.asarray(X, np.float32), np.asarray(Y, np.float32)
        dot = X @ Y.T
        if self.kernel == "poly":
            return (np.float64(gamma) * dot.astype(np.float64)) ** self.degree
        if self.kernel != "rbf":
            raise ValueError(f"kernel {self.kernel!r}: choose rbf or poly")
        squared = (X * X).sum(axis=1)[:, None] + (Y * Y).sum(axis=1)[None, :] - 2.0 * dot
        return np.exp(-np.float64(gamma) * np.maximum(squared, 0.0), dtype=np.float64)

    def fit_kernel(self, K, y):
        """Fit the SVC on a precomputed kernel matrix of the training rows (no temperature)."""
        from sklearn.svm import SVC

        self.svc_ = SVC(kernel="precomputed", C=self.C, class_weight=self.class_weight,
                        decision_function_shape="ovr", random_state=self.random_state).fit(K, y)
        self.classes_ = self.svc_.classes_
        self.temperature_ = 1.0
        return self

    def fit(self, X, y, groups=None):
        X, y = checked_training_data(self, X, y)
        X = np.asarray(X, np.float32)
        self.gamma_ = self.gamma_for(X)
        self.fit_kernel(self.kernel_matrix(X, X, self.gamma_), y)
        self.support_vectors_ = X[self.svc_.support_]
        self.n_fit_ = len(X)
        self.temperature_ = fixed_or_cv_temperature(self, X, y, groups)
        return self

    def decision_function(self, X):
        X = checked_input(self, X)
        if self.svc_.kernel != "precomputed":   # heads saved before the precomputed kernel
            return self.svc_.decision_function(X)
        parts = []
        for start in range(0, len(X), 2048):   # bounded memory: (2048, n_fit) at a time
            rows = np.asarray(X[start:start + 2048], np.float32)
            full = np.zeros((len(rows), self.n_fit_))
            full[:, self.svc_.support_] = self.kernel_matrix(rows, self.support_vectors_,
                                                             self.gamma_)
            parts.append(self.svc_.decision_function(full))
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)))


class TemperedSGD(SoftmaxLinearMixin, ClassifierMixin, BaseEstimator):
    """A linear model trained by SGD (`partial_fit` over chunks for out-of-core data), with
    probabilities softmax(T * decision_function); T fitted on held-out decision values."""

    def __init__(self, alpha=1e-4, loss="hinge", class_weight=None, random_state=0):
        self.alpha = alpha
        self.loss = loss
        self.class_weight = class_weight
        self.random_state = random_state

    def _sgd(self):
        from sklearn.linear_model import SGDClassifier

        return SGDClassifier(loss=self.loss, alpha=self.alpha, class_weight=self.class_weight,
                             random_state=self.random_state, learning_rate="optimal",
                             average=True)

    def fit(self, X, y, groups=None):
        X, y = checked_training_data(self, X, y)
        with quiet_convergence():
            return self._fit(X, y, groups)

    def _fit(self, X, y, groups=None):
        sgd = self._sgd()
        sgd.set_params(max_iter=50, tol=1e-4)
        sgd.fit(X, y)
        self.adopt(sgd)
        # temperature on a held-out quarter (whole images when grouped), refit kept on everything
        y_index = np.searchsorted(self.classes_, y)
        cv = (held_out_splitter(y_index, 4, self.random_state, groups)
              or held_out_splitter(y_index, 2, self.random_state, groups))
        if cv is not None:
            fit_idx, held = next(cv.split(X, y, groups))
            part = self._sgd().set_params(max_iter=50, tol=1e-4).fit(X[fit_idx], y[fit_idx])
            self.temperature_ = fit_temperature(part.decision_function(X[held]), y_index[held])
        return self

    def adopt(self, sgd, temperature=1.0):
        """Take the weights of a fitted SGDClassifier (e.g. after partial_fit over chunks)."""
        self.classes_ = sgd.classes_
        self.coef_, self.intercept_ = sgd.coef_.copy(), sgd.intercept_.copy()
        self.n_features_in_ = sgd.coef_.shape[1]
        self.temperature_ = float(temperature)
        return self


class NumpyMLP(ClassifierMixin, BaseEstimator):
    """Dense(hidden, relu) -> Dense(n_classes, softmax), trained by scikit-learn's MLPClassifier
    (features/heads/mlp.py: Adam, L2, early stopping on a validation set, seeded) and stored as
    numpy arrays, so neither training nor loading needs TensorFlow, and predicted in numpy.
    `weights_` = [W1, b1, W2, b2]. `dropout` must be 0 (MLPClassifier has none); heads fitted
    with dropout by the numpy trainer of earlier versions still load and predict."""

    def __init__(self, hidden=256, dropout=0.0, learning_rate=5e-3, l2=1e-4, batch_size=256,
                 max_epochs=200, patience=3, class_weight=None, random_state=0):
        self.hidden = hidden
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.l2 = l2
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None, groups=None):
        from features.heads.mlp import MLPSettings, train_mlp

        X, y = checked_training_data(self, X, y)
        X = np.asarray(X, dtype=np.float32)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError("NumpyMLP needs samples of at least 2 classes in the data, but the "
                             f"data contains only one class: {self.classes_[0]!r}")
        y_index = np.searchsorted(self.classes_, y)
        X, y_index, X_val, yv_index = self._early_stopping_rows(X, y_index, X_val, y_val, groups)
        settings = MLPSettings(self.hidden, self.dropout, self.learning_rate, self.l2,
                               self.batch_size, self.max_epochs, self.patience)
        result = train_mlp(X, y_index, X_val, yv_index, len(self.classes_), settings,
                           self._class_weights(y_index), int(self.random_state))
        self.weights_ = result.weights
        self.n_epochs_, self.best_epoch_ = result.n_epochs, result.best_epoch
        self.n_features_in_ = X.shape[1]
        return self

    def _early_stopping_rows(self, X, y_index, X_val, y_val, groups):
        """(X, y, X_val, y_val) for training: the given val set, else a stratified tenth of the
        training rows (whole images when grouped), else the training rows themselves."""
        if X_val is not None and len(X_val):
            return X, y_index, X_val, np.searchsorted(self.classes_, y_val)
        held = self._holdout(y_index, groups) if len(y_index) >= 20 else None
        if held is None:
            return X, y_index, X, y_index
        fit_idx = np.setdiff1d(np.arange(len(y_index)), held)
        return X[fit_idx], y_index[fit_idx], X[held], y_index[held]

    def _class_weights(self, y_index):
        """Per-class weights (indexed like classes_) for 'balanced' or a {label: weight} dict."""
        k = len(self.classes_)
        if self.class_weight == "balanced":
            counts = np.bincount(y_index, minlength=k).astype(float)
            return np.where(counts > 0, len(y_index) / (k * np.maximum(counts, 1)), 0.0)
        if isinstance(self.class_weight, dict):
            return np.array([float(self.class_weight.get(c, 1.0)) for c in self.classes_])
        return None

    def _holdout(self, y_index, groups=None):
        """Rows of a stratified tenth held out for early stopping (whole images when grouped)."""
        if np.bincount(y_index).min() < 2:
            return None
        if groups is None:
            from sklearn.model_selection import train_test_split

            n_classes = len(np.unique(y_index))
            n_held = max(n_classes, int(np.ceil(0.1 * len(y_index))))
            if len(y_index) - n_held < n_classes:
                return None
            return train_test_split(np.arange(len(y_index)), test_size=n_held, stratify=y_index,
                                    random_state=self.random_state)[1]
        cv = held_out_splitter(y_index, min(10, smallest_class(y_index, groups)),
                               self.random_state, groups)
        return None if cv is None else next(cv.split(y_index, y_index, groups))[1]

    def predict_proba(self, X):
        X = checked_input(self, X)
        w1, b1, w2, b2 = self.weights_
        h = np.maximum(np.asarray(X, dtype=np.float64) @ w1 + b1, 0.0)
        return softmax(h @ w2 + b2)

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

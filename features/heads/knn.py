"""The kNN head: cosine k-nearest-neighbours on cached features, the literature's companion of the
linear probe (and the classifier of a retrieval index).

`CosineKNN` wraps scikit-learn's KNeighborsClassifier (brute-force cosine, uniform votes), so its
predictions are that estimator's. Probabilities are the neighbours' vote shares, smoothed by
`smoothing` (a share of one vote spread over the classes), so a log-loss or a confidence is never
infinite. It keeps its training rows: it cannot become a network layer (not transplantable by
finetune). CV chooses k in one neighbour search per fold for the whole grid (`grid_outputs`).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from features.heads.estimators import checked_input, checked_training_data

K_GRID = (1, 3, 5, 10, 20, 40)


class CosineKNN(ClassifierMixin, BaseEstimator):
    """k nearest training rows by cosine distance; probabilities = smoothed vote shares."""

    def __init__(self, n_neighbors=10, smoothing=0.1):
        self.n_neighbors = n_neighbors
        self.smoothing = smoothing

    def fit(self, X, y):
        from sklearn.neighbors import KNeighborsClassifier

        X, y = checked_training_data(self, X, y)
        self.knn_ = KNeighborsClassifier(n_neighbors=min(int(self.n_neighbors), len(X)),
                                         metric="cosine", algorithm="brute").fit(X, y)
        self.classes_ = self.knn_.classes_
        self.y_index_ = np.searchsorted(self.classes_, y)   # label index of each training row
        return self

    def _shares(self, neighbour_labels, k: int) -> np.ndarray:
        """Smoothed vote shares (n, classes) of the first k neighbours' label indices."""
        n_classes = len(self.classes_)
        votes = np.zeros((len(neighbour_labels), n_classes))
        for column in range(k):
            np.add.at(votes, (np.arange(len(votes)), neighbour_labels[:, column]), 1.0)
        return (votes + self.smoothing / n_classes) / (k + self.smoothing)

    def predict_proba(self, X):
        X = checked_input(self, X)
        k = self.knn_.n_neighbors
        rows = self.knn_.kneighbors(X, n_neighbors=k, return_distance=False)
        return self._shares(self.y_index_[rows], k)

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def grid_outputs(self, models, X_fit, y_fit, X_held) -> list:
        """Held-out probabilities of each of `models` (clones differing in n_neighbors) fitted
        on X_fit: one neighbour search for the largest k serves every k (the first k columns
        of a sorted neighbour list are the k nearest)."""
        largest = max(models, key=lambda m: m.n_neighbors)
        largest.fit(X_fit, y_fit)
        k_max = largest.knn_.n_neighbors
        rows = largest.knn_.kneighbors(np.asarray(X_held), n_neighbors=k_max,
                                       return_distance=False)
        labels = largest.y_index_[rows]
        outputs = []
        for model in models:
            model.classes_ = largest.classes_
            outputs.append(model._shares(labels, min(int(model.n_neighbors), k_max)))
        return outputs

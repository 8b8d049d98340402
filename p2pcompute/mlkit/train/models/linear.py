"""Linear models: logistic regression (binary and one-vs-rest), softmax regression, linear and ridge regression.

Classifiers learn by full-batch gradient steps (`base.GradientModel`). One-vs-rest trains the K binary
problems side by side as the K columns of one weight matrix: the losses are independent, so this is the same
as K separate binary fits, done with one matrix product per step (and one allreduce when distributed).
Linear/ridge regression solves the normal equations; distributed, the workers allreduce their shards' XᵀX and
Xᵀy, which are exact sums, so the distributed solution equals the single-process one.
"""

from __future__ import annotations

import numpy as np

from p2pcompute.mlkit.train.models.base import Estimator, GradientModel, check_X, check_Xy, reducer_for


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


class _Classifier(GradientModel):
    def _targets(self, y: np.ndarray, reducer) -> np.ndarray:
        labels = sorted(set().union(*[set(part) for part in reducer.gather(np.unique(y).tolist())]))
        if len(labels) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two classes in y, got {labels}")
        self.classes_ = np.asarray(labels)
        return self._encode(y)

    def _encode(self, y: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        if not np.array_equal(self.classes_[idx], y):
            raise ValueError(f"y has labels outside the fitted classes {self.classes_.tolist()}")
        return idx

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)  # checks fitted first
        return self.classes_[np.argmax(scores, axis=1)]

    def score(self, X, y) -> float:
        """Accuracy."""
        return float(np.mean(self.predict(X) == np.asarray(y)))


class LogisticRegression(_Classifier):
    """Binary logistic regression; one-vs-rest for more than two classes."""

    def __init__(self, alpha: float = 1e-4, lr: float = 0.5, max_iter: int = 300, tol: float = 1e-7,
                 optimizer: str = "gd", momentum: float = 0.9, random_state: int = 0):
        self.alpha, self.lr, self.max_iter, self.tol = alpha, lr, max_iter, tol
        self.optimizer, self.momentum, self.random_state = optimizer, momentum, random_state

    def _n_outputs(self) -> int:
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def _init_weights(self, n_features, rng):
        return {"W": np.zeros((n_features, self._n_outputs())), "b": np.zeros(self._n_outputs())}

    def _onehot(self, idx: np.ndarray) -> np.ndarray:
        if self._n_outputs() == 1:
            return idx.reshape(-1, 1).astype(np.float64)
        Y = np.zeros((len(idx), self._n_outputs()))
        Y[np.arange(len(idx)), idx] = 1.0
        return Y

    def _loss_grad_sums(self, w, X, idx):
        Y = self._onehot(idx)
        z = X @ w["W"] + w["b"]
        p = _sigmoid(z)
        # log(1 + e^z) - y z, computed stably
        loss = float(np.sum(np.logaddexp(0.0, z) - Y * z))
        d = p - Y
        return loss, {"W": X.T @ d, "b": d.sum(axis=0)}

    def decision_function(self, X) -> np.ndarray:
        self._check_fitted()
        z = check_X(X, self.n_features_in_) @ self.weights_["W"] + self.weights_["b"]
        return np.hstack([-z, z]) if self._n_outputs() == 1 else z

    def predict_proba(self, X) -> np.ndarray:
        p = _sigmoid(self.decision_function(X))
        if self._n_outputs() == 1:
            return p
        return p / p.sum(axis=1, keepdims=True)  # one-vs-rest scores normalised, as scikit-learn does


class SoftmaxRegression(_Classifier):
    """Multinomial logistic regression (cross-entropy over a softmax)."""

    def __init__(self, alpha: float = 1e-4, lr: float = 0.5, max_iter: int = 300, tol: float = 1e-7,
                 optimizer: str = "gd", momentum: float = 0.9, random_state: int = 0):
        self.alpha, self.lr, self.max_iter, self.tol = alpha, lr, max_iter, tol
        self.optimizer, self.momentum, self.random_state = optimizer, momentum, random_state

    def _init_weights(self, n_features, rng):
        k = len(self.classes_)
        return {"W": np.zeros((n_features, k)), "b": np.zeros(k)}

    def _loss_grad_sums(self, w, X, idx):
        z = X @ w["W"] + w["b"]
        z -= z.max(axis=1, keepdims=True)
        logsum = np.log(np.exp(z).sum(axis=1))
        loss = float(np.sum(logsum - z[np.arange(len(idx)), idx]))
        p = np.exp(z - logsum[:, None])
        p[np.arange(len(idx)), idx] -= 1.0
        return loss, {"W": X.T @ p, "b": p.sum(axis=0)}

    def decision_function(self, X) -> np.ndarray:
        self._check_fitted()
        return check_X(X, self.n_features_in_) @ self.weights_["W"] + self.weights_["b"]

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


class LinearRegression(Estimator):
    """Least squares (ridge with `alpha > 0`), solved exactly from the normal equations."""

    def __init__(self, alpha: float = 0.0, fit_intercept: bool = True):
        self.alpha, self.fit_intercept = alpha, fit_intercept

    def fit(self, X, y, *, distributed: bool = False):
        X, y = check_Xy(X, y)
        y = y.astype(np.float64)
        reducer = reducer_for(distributed)
        A = np.hstack([X, np.ones((len(X), 1))]) if self.fit_intercept else X
        d = A.shape[1]
        sums = reducer.sum(np.concatenate([(A.T @ A).ravel(), A.T @ y, [len(X)]]))
        gram, rhs = sums[:d * d].reshape(d, d), sums[d * d:d * d + d]
        penalty = np.full(d, float(self.alpha))
        if self.fit_intercept:
            penalty[-1] = 0.0  # the intercept is not shrunk
        coef = np.linalg.lstsq(gram + np.diag(penalty), rhs, rcond=None)[0]
        self.n_features_in_ = X.shape[1]
        self.weights_ = {"W": coef[:X.shape[1]], "b": np.array([coef[-1] if self.fit_intercept else 0.0])}
        return self

    @property
    def coef_(self) -> np.ndarray:
        return self.weights_["W"]

    @property
    def intercept_(self) -> float:
        return float(self.weights_["b"][0])

    def predict(self, X) -> np.ndarray:
        self._check_fitted()
        return check_X(X, self.n_features_in_) @ self.weights_["W"] + self.weights_["b"][0]

    def score(self, X, y) -> float:
        """R², as scikit-learn's regressors report it."""
        y = np.asarray(y, dtype=np.float64)
        resid = np.sum((y - self.predict(X)) ** 2)
        total = np.sum((y - y.mean()) ** 2)
        return float(1.0 - resid / total) if total > 0 else 0.0


class Ridge(LinearRegression):
    """Linear regression with an L2 penalty `alpha` (default 1.0, as in scikit-learn)."""

    def __init__(self, alpha: float = 1.0, fit_intercept: bool = True):
        super().__init__(alpha=alpha, fit_intercept=fit_intercept)

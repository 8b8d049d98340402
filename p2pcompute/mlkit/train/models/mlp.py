"""A small multilayer perceptron classifier: dense layers, ReLU or tanh, softmax output, trained by
full-batch Adam (or momentum gradient descent) through `base.GradientModel`, so it distributes like the
linear models: one allreduce of every layer's gradient sums per step."""

from __future__ import annotations

import numpy as np

from p2pcompute.mlkit.train.models.base import check_X
from p2pcompute.mlkit.train.models.linear import _Classifier


class MLPClassifier(_Classifier):
    def __init__(self, hidden_layer_sizes: tuple = (32,), activation: str = "relu", alpha: float = 1e-4,
                 lr: float = 0.01, max_iter: int = 300, tol: float = 0.0, optimizer: str = "adam",
                 momentum: float = 0.9, random_state: int = 0):
        self.hidden_layer_sizes, self.activation = hidden_layer_sizes, activation
        self.alpha, self.lr, self.max_iter, self.tol = alpha, lr, max_iter, tol
        self.optimizer, self.momentum, self.random_state = optimizer, momentum, random_state

    def _sizes(self, n_features: int) -> list[int]:
        hidden = list(self.hidden_layer_sizes)
        if any(not isinstance(h, (int, np.integer)) or h < 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive ints, got {self.hidden_layer_sizes!r}")
        return [n_features] + hidden + [len(self.classes_)]

    def _regularized(self, name: str) -> bool:
        return name.startswith("W")

    def _init_weights(self, n_features, rng):
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', not {self.activation!r}")
        sizes = self._sizes(n_features)
        w = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform
            w[f"W{i}"] = rng.uniform(-bound, bound, size=(fan_in, fan_out))
            w[f"b{i}"] = np.zeros(fan_out)
        return w

    def _forward(self, w, X):
        layers = len(w) // 2
        acts = [X]
        h = X
        for i in range(layers):
            z = h @ w[f"W{i}"] + w[f"b{i}"]
            if i < layers - 1:
                h = np.maximum(z, 0.0) if self.activation == "relu" else np.tanh(z)
            else:
                h = z
            acts.append(h)
        return acts

    def _loss_grad_sums(self, w, X, idx):
        acts = self._forward(w, X)
        z = acts[-1] - acts[-1].max(axis=1, keepdims=True)
        logsum = np.log(np.exp(z).sum(axis=1))
        rows = np.arange(len(idx))
        loss = float(np.sum(logsum - z[rows, idx]))
        delta = np.exp(z - logsum[:, None])
        delta[rows, idx] -= 1.0
        grads = {}
        layers = len(w) // 2
        for i in reversed(range(layers)):
            grads[f"W{i}"] = acts[i].T @ delta
            grads[f"b{i}"] = delta.sum(axis=0)
            if i:
                delta = delta @ w[f"W{i}"].T
                delta *= (acts[i] > 0) if self.activation == "relu" else (1.0 - acts[i] ** 2)
        return loss, {k: grads[k] for k in w}

    def decision_function(self, X) -> np.ndarray:
        self._check_fitted()
        return self._forward(self.weights_, check_X(X, self.n_features_in_))[-1]

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

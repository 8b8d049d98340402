"""What every numpy model shares: hyperparameters, optimizers, the full-batch training loop, distribution.

Theory of operation. A model's training loop never sums over rows itself: it asks a *reducer* for the sum
over all of the data. In one process (`LocalReducer`) that is the identity. Inside a training loop run by a
trainer (`fit(X_shard, y_shard, distributed=True)`) it is `train.allreduce(..., "sum")` across the workers
(`GroupReducer`). Each step every worker computes the *sums* of its shard's loss and gradient, one allreduce
makes them the sums over the whole data set, and every worker divides by the global row count and takes the
same optimizer step. So a distributed fit computes the very numbers a single-process fit does, only with
the row sums added in another order (floating-point rounding of ~1e-16 relative), whatever the shard sizes.
Initial weights depend only on the seed and the shapes (and labels, gathered from all shards), never on
which rows a worker holds.

Hyperparameters follow scikit-learn (`get_params`/`set_params`, constructor arguments as attributes), so
`sklearn.base.clone` and model selection tools work; learned arrays are `get_weights()`/`set_weights()`.
"""

from __future__ import annotations

import copy
import inspect
import tempfile

import numpy as np


class LocalReducer:
    """Sums over the data of this process alone."""

    world_size = 1
    rank = 0

    def sum(self, array) -> np.ndarray:
        return np.asarray(array, dtype=np.float64)

    def gather(self, obj) -> list:
        return [obj]


class GroupReducer:
    """Sums over every worker of the current training group (call inside train_loop_per_worker)."""

    def __init__(self) -> None:
        from p2pcompute.mlkit.train import session
        self._session = session
        ctx = session.get_context()
        self.world_size, self.rank = ctx.get_world_size(), ctx.get_world_rank()

    def sum(self, array) -> np.ndarray:
        return self._session.allreduce(np.asarray(array, dtype=np.float64), op="sum")

    def gather(self, obj) -> list:
        return self._session.allgather_object(obj)


def reducer_for(distributed):
    """`distributed`: False (this process alone), True (the current training group), or any object with
    `sum(array)`, `gather(obj)`, `rank` and `world_size` (a group formed by other means)."""
    if distributed is True:
        return GroupReducer()
    if distributed is False or distributed is None:
        return LocalReducer()
    if all(hasattr(distributed, a) for a in ("sum", "gather", "rank", "world_size")):
        return distributed
    raise TypeError("distributed must be True, False, or a reducer with sum(), gather(), rank and world_size; "
                    f"got {type(distributed).__name__}")


class Optimizer:
    """Gradient descent with (Nesterov-free) momentum, or Adam; steps dicts of arrays in place."""

    def __init__(self, kind: str, lr: float, momentum: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        if kind not in ("gd", "adam"):
            raise ValueError(f"optimizer must be 'gd' or 'adam', not {kind!r}")
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr!r}")
        self.kind, self.lr, self.momentum, self.beta2, self.eps = kind, lr, momentum, beta2, eps
        self.state: dict[str, list[np.ndarray]] = {}
        self.t = 0

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        for name, g in grads.items():
            w = params[name]
            if self.kind == "gd":
                (v,) = self.state.setdefault(name, [np.zeros_like(w)])
                v *= self.momentum
                v += g
                w -= self.lr * v
            else:
                m, s = self.state.setdefault(name, [np.zeros_like(w), np.zeros_like(w)])
                m *= self.momentum
                m += (1 - self.momentum) * g
                s *= self.beta2
                s += (1 - self.beta2) * g * g
                m_hat = m / (1 - self.momentum ** self.t)
                s_hat = s / (1 - self.beta2 ** self.t)
                w -= self.lr * m_hat / (np.sqrt(s_hat) + self.eps)


class Estimator:
    """scikit-learn's hyperparameter protocol, and distributed fitting through a trainer."""

    _weight_names: tuple[str, ...] = ()

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """Hyperparameters, as scikit-learn defines get_params (learned arrays: `get_weights`)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "Estimator":
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no hyperparameter {name!r}; valid: {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def get_weights(self) -> dict[str, np.ndarray]:
        """The learned arrays (copies)."""
        self._check_fitted()
        return {k: np.array(v, copy=True) for k, v in self.weights_.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.weights_ = {k: np.array(v, dtype=np.float64, copy=True) for k, v in weights.items()}

    def _check_fitted(self) -> None:
        if getattr(self, "weights_", None) is None:
            raise ValueError(f"this {type(self).__name__} is not fitted yet: call fit() first")

    def fit_distributed(self, X, y=None, *, num_workers: int = 2, resources_per_worker: dict | None = None,
                        storage_path: str | None = None, placement_strategy: str = "PACK"):
        """Fit on `num_workers` workers (each gets a shard of the rows), as `fit` does in one process."""
        from p2pcompute.mlkit import train

        model = copy.deepcopy(self)

        def loop():
            X_part, y_part = train.get_dataset_shard("train")
            fitted = copy.deepcopy(model).fit(X_part, y_part, distributed=True)
            if train.get_context().get_world_rank() == 0:
                train.report({"n_iter": getattr(fitted, "n_iter_", 0)},
                             checkpoint=train.Checkpoint.from_dict({"model": fitted}))
            else:
                train.report({})

        data = (np.asarray(X), np.asarray(y) if y is not None else np.zeros(len(X)))
        result = train.DataParallelTrainer(
            loop, datasets={"train": data},
            scaling_config=train.ScalingConfig(num_workers=num_workers, resources_per_worker=resources_per_worker,
                                               placement_strategy=placement_strategy),
            run_config=train.RunConfig(storage_path=storage_path or tempfile.mkdtemp(prefix="p2p_fit_"),
                                       name=f"fit_{type(self).__name__}", verbose=0)).fit()
        fitted = result.checkpoint.to_dict()["model"]
        self.__dict__.update(fitted.__dict__)
        return self


def check_X(X, n_features: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-d array (rows, features), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, the model was fitted with {n_features}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinity")
    return X


def check_Xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = check_X(X)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be 1-d with one label per row of X ({len(X)}), got shape {y.shape}")
    return X, y


class GradientModel(Estimator):
    """A model trained by full-batch gradient steps on the mean loss plus `alpha/2 * |W|^2`."""

    def _init_weights(self, n_features: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _targets(self, y: np.ndarray, reducer) -> np.ndarray:
        raise NotImplementedError

    def _loss_grad_sums(self, w: dict, X: np.ndarray, Y: np.ndarray) -> tuple[float, dict]:
        """Sum over the rows of X of the loss, and of its gradient for each weight array."""
        raise NotImplementedError

    def _regularized(self, name: str) -> bool:
        return not name.startswith("b")  # biases are not penalised

    def fit(self, X, y, *, distributed: bool = False):
        """Train on (X, y); with `distributed=True`, inside a training loop, on the union of all workers' shards."""
        X, y = check_Xy(X, y)
        reducer = reducer_for(distributed)
        Y = self._targets(y, reducer)
        n_total = float(reducer.sum([len(X)])[0])
        if n_total == 0:
            raise ValueError("cannot fit on zero rows")
        self.n_features_in_ = X.shape[1]
        w = self._init_weights(X.shape[1], np.random.default_rng(self.random_state))
        opt = Optimizer(self.optimizer, self.lr, self.momentum)
        names = list(w)
        self.loss_curve_ = []
        prev = np.inf
        for it in range(self.max_iter):
            loss, grads = self._loss_grad_sums(w, X, Y)
            flat = reducer.sum(np.concatenate([[loss]] + [grads[k].ravel() for k in names]))
            loss = flat[0] / n_total
            grads, start = {}, 1
            for k in names:
                size = w[k].size
                grads[k] = flat[start:start + size].reshape(w[k].shape) / n_total
                start += size
                if self.alpha and self._regularized(k):
                    loss += 0.5 * self.alpha * float(np.sum(w[k] ** 2))
                    grads[k] += self.alpha * w[k]
            self.loss_curve_.append(float(loss))
            opt.step(w, grads)
            if self.tol and abs(prev - loss) <= self.tol * max(1.0, abs(loss)):
                break
            prev = loss
        self.n_iter_ = it + 1
        self.weights_ = w
        return self

    # For parameter servers: the mean gradient of a batch, as a dict like get_weights().
    def gradient(self, weights: dict, X, y) -> dict[str, np.ndarray]:
        """Mean gradient of the regularized loss on (X, y) at `weights` (labels must be among `classes_`)."""
        X, y = check_Xy(X, y)
        Y = self._encode(y)
        _, grads = self._loss_grad_sums(weights, X, Y)
        out = {}
        for k, g in grads.items():
            out[k] = g / max(len(X), 1)
            if self.alpha and self._regularized(k):
                out[k] = out[k] + self.alpha * weights[k]
        return out

    def initialize(self, n_features: int, classes=None) -> dict[str, np.ndarray]:
        """Set up an unfitted model for `n_features` (and `classes`), for training outside `fit`."""
        if classes is not None:
            self.classes_ = np.asarray(classes)
        self.n_features_in_ = n_features
        self.weights_ = self._init_weights(n_features, np.random.default_rng(self.random_state))
        return self.get_weights()

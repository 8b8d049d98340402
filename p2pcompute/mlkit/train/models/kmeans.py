"""K-means (Lloyd's algorithm) with k-means++ or random initialisation, in one process or across workers.

Distributed, each step is one allreduce of the per-cluster coordinate sums and counts (k·(d+1) numbers plus
the inertia). The initialisation draws the same random numbers in both modes: k-means++ picks a row with
probability proportional to its squared distance; the workers allreduce their shards' distance totals (and
gather the per-shard totals), every worker draws the same number from the shared seed, and the rank whose
rows it falls in contributes that row through an allreduce (the others contribute zeros). Workers hold
consecutive row ranges in rank order (as the trainer's shards are), so this picks the very row a
single-process fit picks.
"""

from __future__ import annotations

import numpy as np

from p2pcompute.mlkit.train.models.base import Estimator, check_X, reducer_for


def _sq_dist(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    return np.maximum((X * X).sum(1)[:, None] - 2.0 * X @ C.T + (C * C).sum(1)[None, :], 0.0)


class KMeans(Estimator):
    def __init__(self, n_clusters: int = 8, init: str = "k-means++", max_iter: int = 100, tol: float = 1e-6,
                 random_state: int = 0):
        self.n_clusters, self.init, self.max_iter, self.tol, self.random_state = (
            n_clusters, init, max_iter, tol, random_state)

    def _pick_row(self, X: np.ndarray, weights: np.ndarray | None, rng, reducer) -> np.ndarray:
        """One row of the global data: uniformly (weights None) or with probability ∝ weights."""
        local = float(len(X)) if weights is None else float(weights.sum())
        per_rank = np.asarray(reducer.gather(local), dtype=np.float64)
        cum = np.cumsum(per_rank)
        target = rng.random() * cum[-1]
        owner = int(min(np.searchsorted(cum, target, side="right"), len(cum) - 1))
        row = np.zeros(X.shape[1])
        if reducer.rank == owner and len(X):
            offset = target - (cum[owner - 1] if owner else 0.0)
            if weights is None:
                i = int(offset)
            else:
                i = int(np.searchsorted(np.cumsum(weights), offset, side="right"))
            row = X[min(i, len(X) - 1)]
        return reducer.sum(row)

    def _initial_centers(self, X: np.ndarray, reducer) -> np.ndarray:
        rng = np.random.default_rng(self.random_state)
        centers = [self._pick_row(X, None, rng, reducer)]
        for _ in range(1, self.n_clusters):
            if self.init == "random":
                centers.append(self._pick_row(X, None, rng, reducer))
            else:
                d2 = _sq_dist(X, np.asarray(centers)).min(axis=1) if len(X) else np.zeros(0)
                centers.append(self._pick_row(X, d2, rng, reducer))
        return np.asarray(centers)

    def fit(self, X, y=None, *, distributed: bool = False):
        X = check_X(X)
        if self.init not in ("k-means++", "random"):
            raise ValueError(f"init must be 'k-means++' or 'random', not {self.init!r}")
        if not isinstance(self.n_clusters, int) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be an int >= 1, got {self.n_clusters!r}")
        reducer = reducer_for(distributed)
        total = int(reducer.sum([len(X)])[0])
        if total < self.n_clusters:
            raise ValueError(f"k-means needs at least n_clusters={self.n_clusters} rows, got {total}")
        C = self._initial_centers(X, reducer)
        k, d = C.shape
        for it in range(self.max_iter):
            labels = np.argmin(_sq_dist(X, C), axis=1) if len(X) else np.zeros(0, dtype=int)
            sums = np.zeros((k, d))
            np.add.at(sums, labels, X)
            counts = np.bincount(labels, minlength=k).astype(np.float64)
            inertia = float(np.sum((X - C[labels]) ** 2))
            flat = reducer.sum(np.concatenate([sums.ravel(), counts, [inertia]]))
            sums, counts = flat[:k * d].reshape(k, d), flat[k * d:k * d + k]
            self.inertia_ = float(flat[-1])
            new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1.0)[:, None], C)  # empty: stay put
            shift = float(np.sum((new - C) ** 2))
            C = new
            if shift <= self.tol:
                break
        self.n_iter_ = it + 1
        self.n_features_in_ = d
        self.weights_ = {"cluster_centers": C}
        return self

    @property
    def cluster_centers_(self) -> np.ndarray:
        return self.weights_["cluster_centers"]

    def predict(self, X) -> np.ndarray:
        self._check_fitted()
        return np.argmin(_sq_dist(check_X(X, self.n_features_in_), self.cluster_centers_), axis=1)

    def score(self, X, y=None) -> float:
        """Minus the inertia of X (higher is better, as in scikit-learn)."""
        X = check_X(X, self.n_features_in_)
        return -float(_sq_dist(X, self.cluster_centers_).min(axis=1).sum())

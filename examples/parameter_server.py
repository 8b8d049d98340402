"""Synchronous versus asynchronous SGD with a parameter server (the seed's parameter-server story).

    python examples/parameter_server.py

A softmax classifier's weights live on two server actors (sharded). Two workers each hold half of the data
and loop: pull the weights, compute a minibatch gradient, push it. In sync mode the server averages one
gradient from each worker per step; in async mode it applies each push at once, and reports how stale the
gradients were (how many updates landed between a worker's pull and its push). A single process running
the same number of minibatch steps is the baseline. Prints wall time, test accuracy and staleness.
"""

from __future__ import annotations

import time

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit import train
from p2pcompute.mlkit.train.models import SoftmaxRegression

STEPS, BATCH, LR = 150, 256, 0.2


def make_data(rows: int = 24_000, features: int = 30, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, size=(classes, features))
    y = rng.integers(0, classes, size=rows)
    return centers[y] + rng.normal(0, 1.3, size=(rows, features)), y


def minibatch_grad(model: SoftmaxRegression):
    """A gradient function for the server's workers: a fresh minibatch of the worker's shard each call."""

    def grad(weights, shard):
        X, y, seed = shard
        rng = grad.rng = getattr(grad, "rng", None) or np.random.default_rng(seed)
        idx = rng.integers(0, len(y), size=BATCH)
        return model.gradient(weights, X[idx], y[idx])

    return grad


def main() -> None:
    X_all, y_all = make_data()
    X, y, X_test, y_test = X_all[:20_000], y_all[:20_000], X_all[20_000:], y_all[20_000:]
    model = SoftmaxRegression(alpha=1e-4)
    init = model.initialize(X.shape[1], classes=np.unique(y))

    # Baseline: one process, the same number of minibatch updates as the sync run.
    t0 = time.perf_counter()
    weights = {k: v.copy() for k, v in init.items()}
    grad = minibatch_grad(model)
    for _ in range(STEPS):
        g = grad(weights, (X, y, 0))
        for k in weights:
            weights[k] -= LR * g[k]
    model.set_weights(weights)
    print(f"one process, {STEPS} minibatch steps:          {time.perf_counter() - t0:6.2f} s   "
          f"test accuracy {model.score(X_test, y_test):.4f}")

    p2p.init(num_cpus=2)
    shards = [(X[:10_000], y[:10_000], 1), (X[10_000:], y[10_000:], 2)]
    for mode in ("sync", "async"):
        ps = train.ParameterServer(init, mode=mode, num_workers=2, lr=LR, num_shards=2)
        out = ps.train(minibatch_grad(model), shards, num_steps=STEPS)
        ps.shutdown()
        model.set_weights(out["weights"])
        s = out["stats"]
        print(f"p2pcompute {mode:5s} PS, 2 workers x {STEPS} pushes: {out['wall_s']:6.2f} s   test accuracy "
              f"{model.score(X_test, y_test):.4f}   updates {s.updates}, staleness mean {s.staleness_mean:.2f} "
              f"max {s.staleness_max}")
    p2p.shutdown()


if __name__ == "__main__":
    main()

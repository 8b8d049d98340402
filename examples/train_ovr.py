"""One-vs-rest classification three ways: one process, one task per class, and data-parallel workers.

    python examples/train_ovr.py [--rows 40000]

A K-class problem becomes K binary "this class or not" problems. They are independent, so p2pcompute can
train them as K tasks reading the same features (`put` once, mapped by every task); or the rows can be split
across workers that allreduce their gradients every step (`fit_distributed`), which gives the single-process
weights exactly. Prints the wall time and test accuracy of each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.train.models import LogisticRegression


def make_data(rows: int, features: int = 40, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, size=(classes, features))
    y = rng.integers(0, classes, size=rows)
    return centers[y] + rng.normal(0, 1.5, size=(rows, features)), y


@p2p.remote
def fit_binary(X, y, label, max_iter):
    """Train 'label versus the rest' and return its weight column and bias."""
    try:  # one BLAS thread per task: a task per CPU, not a thread pool per task fighting for the same cores
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(limits=1)
    except ImportError:
        limit = None
    model = LogisticRegression(max_iter=max_iter, tol=0.0).fit(X, (y == label).astype(int))
    if limit is not None:
        limit.restore_original_limits()
    w = model.get_weights()
    return w["W"][:, 0], w["b"][0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--iters", type=int, default=80)
    args = parser.parse_args()
    X_all, y_all = make_data(args.rows + 10_000)
    X, y, X_test, y_test = X_all[:args.rows], y_all[:args.rows], X_all[args.rows:], y_all[args.rows:]
    classes = np.unique(y)

    t0 = time.perf_counter()
    single = LogisticRegression(max_iter=args.iters, tol=0.0).fit(X, y)
    single_s = time.perf_counter() - t0
    print(f"one process, K binary problems side by side: {single_s:6.2f} s   test accuracy "
          f"{single.score(X_test, y_test):.4f}")

    p2p.init(num_cpus=2)
    t0 = time.perf_counter()
    X_ref, y_ref = p2p.put(X), p2p.put(y)  # stored once, read by every task without a copy
    columns = p2p.get([fit_binary.remote(X_ref, y_ref, k, args.iters) for k in classes])
    scores = X_test @ np.stack([w for w, _ in columns], axis=1) + np.array([b for _, b in columns])
    tasks_s = time.perf_counter() - t0
    print(f"p2pcompute, one task per class ({len(classes)} tasks): {tasks_s:6.2f} s   test accuracy "
          f"{np.mean(classes[scores.argmax(axis=1)] == y_test):.4f}   ({single_s / tasks_s:.2f}x one process)")

    t0 = time.perf_counter()
    dist = LogisticRegression(max_iter=args.iters, tol=0.0).fit_distributed(X, y, num_workers=2)
    dist_s = time.perf_counter() - t0
    gap = max(float(np.abs(single.get_weights()[k] - dist.get_weights()[k]).max()) for k in ("W", "b"))
    print(f"p2pcompute, 2 data-parallel workers (allreduce): {dist_s:6.2f} s   test accuracy "
          f"{dist.score(X_test, y_test):.4f}   ({single_s / dist_s:.2f}x one process; weights differ from the "
          f"single-process fit by {gap:.1e})")
    p2p.shutdown()


if __name__ == "__main__":
    main()

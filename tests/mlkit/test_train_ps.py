"""ParameterServer: asynchronous SGD converges on a convex problem and reports staleness; synchronous SGD is
exactly full-batch gradient descent (sharded over several server actors or not); layouts and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from p2pcompute.mlkit import train

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]


def _least_squares(n=600, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w_true = rng.normal(size=d)
    y = X @ w_true + rng.normal(0, 0.05, size=n)
    return X, y


def _grad(w, shard):
    X, y = shard
    return X.T @ (X @ w - y) / len(y)


def test_async_sgd_converges_on_least_squares_and_reports_staleness(ml_cluster):
    X, y = _least_squares()
    best = np.linalg.lstsq(X, y, rcond=None)[0]
    ps = train.ParameterServer(np.zeros(X.shape[1]), mode="async", lr=0.1, num_shards=2)
    try:
        shards = [(X[i::3], y[i::3]) for i in range(3)]
        out = ps.train(_grad, shards, num_steps=60, num_cpus_per_worker=0)
    finally:
        ps.shutdown()
    assert np.linalg.norm(out["weights"] - best) < 0.02 * np.linalg.norm(best)
    stats = out["stats"]
    assert stats.mode == "async" and stats.pushes == 180 and stats.updates == 180
    # two shards each count every push once
    assert sum(stats.staleness_histogram.values()) == 2 * 180
    assert 0 <= stats.staleness_mean <= stats.staleness_max <= 180


@pytest.mark.parametrize("num_shards", [1, 3])
def test_sync_sgd_is_full_batch_gradient_descent(ml_cluster, num_shards):
    X, y = _least_squares(n=300)
    lr, steps = 0.2, 15
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        w = w - lr * _grad(w, (X, y))
    ps = train.ParameterServer(np.zeros(X.shape[1]), mode="sync", num_workers=3, lr=lr, num_shards=num_shards)
    try:
        shards = [(X[i * 100:(i + 1) * 100], y[i * 100:(i + 1) * 100]) for i in range(3)]  # equal sizes
        out = ps.train(_grad, shards, num_steps=steps, num_cpus_per_worker=0)
    finally:
        ps.shutdown()
    np.testing.assert_allclose(out["weights"], w, rtol=1e-10, atol=1e-12)
    assert out["stats"].updates == steps and out["stats"].staleness_max == 0


def test_dict_weights_keep_their_layout_across_shards(ml_cluster):
    weights = {"W": np.arange(12, dtype=float).reshape(4, 3), "b": np.ones(3)}
    ps = train.ParameterServer(weights, mode="async", lr=1.0, num_shards=3)
    try:
        got, versions = ps.pull()
        assert set(got) == {"W", "b"} and got["W"].shape == (4, 3)
        np.testing.assert_array_equal(got["W"], weights["W"])
        new, _ = ps.push_pull({"W": np.ones((4, 3)), "b": np.zeros(3)}, versions)
        np.testing.assert_array_equal(new["W"], weights["W"] - 1.0)
        np.testing.assert_array_equal(new["b"], weights["b"])
        with pytest.raises(ValueError, match="keys"):
            ps.push({"W": np.ones((4, 3))}, versions)
        with pytest.raises(ValueError, match="shape"):
            ps.push({"W": np.ones((3, 3)), "b": np.zeros(3)}, versions)
    finally:
        ps.shutdown()


def test_sync_mode_refuses_a_gradient_from_an_old_round(ml_cluster):
    ps = train.ParameterServer(np.zeros(2), mode="sync", num_workers=1, lr=1.0)
    try:
        _, v0 = ps.pull()
        ps.push(np.ones(2), v0)
        with pytest.raises(ValueError, match="pull the weights after each push"):
            ps.push(np.ones(2), v0)
    finally:
        ps.shutdown()


def test_bad_parameter_server_arguments():
    with pytest.raises(ValueError, match="mode"):
        train.ParameterServer(np.zeros(2), mode="hogwild")
    with pytest.raises(ValueError, match="num_shards"):
        train.ParameterServer(np.zeros(2), num_shards=0)
    with pytest.raises(TypeError, match="numeric"):
        train.ParameterServer(np.array(["a", "b"]))

"""The "p2pcompute" joblib backend: joblib.Parallel and a scikit-learn cross-validation run on the cluster."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]

joblib = pytest.importorskip("joblib")

import p2pcompute.mlkit.pool  # noqa: E402,F401 - registers the backend


def pid_and_square(x):
    return os.getpid(), x * x


def test_parallel_runs_in_cluster_workers(ml_cluster):
    with joblib.parallel_backend("p2pcompute"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(pid_and_square)(i) for i in range(40))
    assert [sq for _, sq in out] == [i * i for i in range(40)]
    assert os.getpid() not in {pid for pid, _ in out}


def test_parallel_error_surfaces(ml_cluster):
    with joblib.parallel_backend("p2pcompute"):
        with pytest.raises(ZeroDivisionError):
            joblib.Parallel(n_jobs=2)(joblib.delayed(divmod)(1, d) for d in [1, 0, 2])


def test_sklearn_cross_validation(ml_cluster):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, y = load_iris(return_X_y=True)
    with joblib.parallel_backend("p2pcompute"):
        scores = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=5, n_jobs=-1)
    assert len(scores) == 5
    assert scores.mean() > 0.9  # the model learned: iris is nearly separable

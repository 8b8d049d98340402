"""Property: a model fitted across any split of the rows into consecutive shards — uneven, some empty —
gets the single-process weights. The group is simulated in-process (one thread per rank, a reducer that sums
in rank order), so hypothesis can try many splits without a cluster; the real group is tested in
test_train_models.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcompute.mlkit.train import models as M

pytestmark = [pytest.mark.mlkit]


class _ThreadGroup:
    """Sums and gathers across `n` threads, every rank computing the same result in rank order."""

    def __init__(self, n: int):
        self.n = n
        self.slots: list = [None] * n
        self.barrier = threading.Barrier(n)

    def member(self, rank: int):
        group = self

        class Reducer:
            world_size = group.n

            def __init__(self):
                self.rank = rank

            def _exchange(self, value):
                group.slots[rank] = value
                group.barrier.wait()
                values = list(group.slots)
                group.barrier.wait()
                return values

            def sum(self, array):
                parts = self._exchange(np.asarray(array, dtype=np.float64))
                out = parts[0].copy()
                for p in parts[1:]:
                    out += p
                return out

            def gather(self, obj):
                return self._exchange(obj)

        return Reducer()


def _fit_split(make, X, y, cuts):
    bounds = [0] + cuts + [len(X)]
    group = _ThreadGroup(len(bounds) - 1)
    results, errors = [None] * group.n, []

    def run(rank):
        a, b = bounds[rank], bounds[rank + 1]
        try:
            model = make()
            args = (X[a:b],) if y is None else (X[a:b], y[a:b])
            results[rank] = model.fit(*args, distributed=group.member(rank)).get_weights()
        except Exception as exc:  # reported below, with the failing split
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(group.n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


MODELS = {
    "logistic": (lambda: M.LogisticRegression(max_iter=30), "labels"),
    "softmax": (lambda: M.SoftmaxRegression(max_iter=30), "labels"),
    "mlp": (lambda: M.MLPClassifier(hidden_layer_sizes=(4,), max_iter=15), "labels"),
    "ridge": (lambda: M.Ridge(alpha=0.5), "values"),
    "kmeans": (lambda: M.KMeans(n_clusters=3, max_iter=20), None),
}


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(MODELS)), rows=st.integers(12, 60), seed=st.integers(0, 2**16),
       data=st.data())
def test_any_consecutive_split_gives_the_single_process_weights(name, rows, seed, data):
    make, target = MODELS[name]
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3))
    if target == "labels":
        y = np.arange(rows) % 3  # every class present
        rng.shuffle(y)
    elif target == "values":
        y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=rows)
    else:
        y = None
    workers = data.draw(st.integers(1, 4))
    cuts = sorted(data.draw(st.lists(st.integers(0, rows), min_size=workers - 1, max_size=workers - 1)))
    single = (make().fit(X) if y is None else make().fit(X, y)).get_weights()
    for weights in _fit_split(make, X, y, cuts):
        for key in single:
            assert np.max(np.abs(weights[key] - single[key])) <= 1e-6, (name, cuts, key)


def test_distributed_must_name_a_group():
    with pytest.raises(TypeError, match="reducer"):
        M.LogisticRegression().fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]), distributed="yes")

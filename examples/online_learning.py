"""Online learning: a stream of labelled batches trains a model held by a parameter server, while another
actor serves predictions from the latest weights.

    python examples/online_learning.py

The stream drifts: halfway through, the class centres move, and the model has to follow. Two learner actors
take batches as they arrive, compute a gradient and push it to the parameter server (async mode). A
predictor actor answers `predict(X)` with whatever weights the server holds, refreshing them at most every
50 ms, so serving never waits on training. The driver reports the predictor's accuracy on fresh data from the
stream's current distribution as it goes, then compares wall time with a single process doing the same
updates in a loop.
"""

from __future__ import annotations

import time

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit import train
from p2pcompute.mlkit.train.models import LogisticRegression

FEATURES, CLASSES, BATCH, BATCHES, LR = 20, 3, 200, 120, 0.5
REPORT_AT = (0, 20, 59, 60, 62, 66, 80, 119)  # around the drift at batch 60


class Stream:
    """Labelled batches from Gaussian classes whose centres jump once, halfway through."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.before = rng.normal(0, 0.6, size=(CLASSES, FEATURES))
        self.after = rng.normal(0, 0.6, size=(CLASSES, FEATURES))
        self.rng = np.random.default_rng(seed + 1)

    def batch(self, i: int, rows: int = BATCH):
        centers = self.before if i < BATCHES // 2 else self.after
        y = self.rng.integers(0, CLASSES, size=rows)
        return centers[y] + self.rng.normal(0, 1.0, size=(rows, FEATURES)), y


@p2p.remote
class Learner:
    def __init__(self, ps, model):
        self.ps, self.model = ps, model

    def learn(self, X, y) -> int:
        weights, versions = self.ps.pull()
        self.ps.push(self.model.gradient(weights, X, y), versions)
        return len(y)


@p2p.remote
class Predictor:
    def __init__(self, ps, model, refresh_s: float = 0.05):
        self.ps, self.model, self.refresh_s = ps, model, refresh_s
        self.loaded_at = -1.0

    def predict(self, X):
        if time.monotonic() - self.loaded_at > self.refresh_s:
            self.model.set_weights(self.ps.get_weights())
            self.loaded_at = time.monotonic()
        return self.model.predict(X)


def main() -> None:
    model = LogisticRegression(alpha=1e-4)
    init = model.initialize(FEATURES, classes=np.arange(CLASSES))

    # Baseline: one process, the same updates one after another.
    stream = Stream()
    weights = {k: v.copy() for k, v in init.items()}
    t0 = time.perf_counter()
    for i in range(BATCHES):
        X, y = stream.batch(i)
        g = model.gradient(weights, X, y)
        for k in weights:
            weights[k] -= LR * g[k]
    model.set_weights(weights)
    X_eval, y_eval = stream.batch(BATCHES - 1, rows=2000)
    print(f"one process: {BATCHES} batches in {time.perf_counter() - t0:.2f} s, final accuracy "
          f"{model.score(X_eval, y_eval):.3f}")

    p2p.init(num_cpus=2)
    stream = Stream()
    ps = train.ParameterServer(init, mode="async", lr=LR)
    learners = [Learner.options(num_cpus=0).remote(ps, model) for _ in range(2)]
    predictor = Predictor.options(num_cpus=0).remote(ps, model)
    t0 = time.perf_counter()
    in_flight = []
    for i in range(BATCHES):
        X, y = stream.batch(i)
        in_flight.append(learners[i % 2].learn.remote(X, y))
        if len(in_flight) > 4:  # bounded queue: the stream waits for learners rather than piling up
            _, in_flight = p2p.wait(in_flight, num_returns=len(in_flight) - 4)
        if i in REPORT_AT:
            X_eval, y_eval = stream.batch(i, rows=1000)
            accuracy = np.mean(p2p.get(predictor.predict.remote(X_eval)) == y_eval)
            phase = "before drift" if i < BATCHES // 2 else "after drift"
            print(f"  batch {i + 1:4d} ({phase}): predictor accuracy on the current stream {accuracy:.3f}")
    p2p.get(in_flight)
    wall = time.perf_counter() - t0
    X_eval, y_eval = stream.batch(BATCHES - 1, rows=2000)
    accuracy = np.mean(p2p.get(predictor.predict.remote(X_eval)) == y_eval)
    stats = ps.stats()
    print(f"p2pcompute: {BATCHES} batches in {wall:.2f} s with 2 learners, final accuracy {accuracy:.3f}, "
          f"{stats.updates} updates, staleness mean {stats.staleness_mean:.2f} max {stats.staleness_max}")
    p2p.shutdown()


if __name__ == "__main__":
    main()

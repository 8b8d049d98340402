"""Train a small classifier with numpy, serve it over HTTP with mlkit.serve, and load-test it.

    python examples/serve_classifier.py

Trains softmax regression on three Gaussian blobs, saves the weights to a .npz file, deploys a `Classifier`
with two replicas and `@serve.batch`, checks the served predictions' accuracy on held-out points through
HTTP, then sends a few seconds of concurrent load and prints requests/s and latency percentiles.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import urllib.request

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit import serve
from p2pcompute.mlkit.serve import loadgen


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])
    y = rng.integers(0, 3, n)
    return centers[y] + rng.normal(scale=1.1, size=(n, 2)), y


def train(x, y, epochs: int = 300, lr: float = 0.5):
    w, b = np.zeros((2, 3)), np.zeros(3)
    onehot = np.eye(3)[y]
    for _ in range(epochs):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(x)
        w -= lr * x.T @ grad
        b -= lr * grad.sum(0)
    return w, b


@serve.deployment(num_replicas=2, max_ongoing_requests=32)
class Classifier:
    def __init__(self, path: str):
        model = np.load(path)
        self.w, self.b = model["w"], model["b"]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, rows: list) -> list:
        return np.argmax(np.stack(rows) @ self.w + self.b, axis=1).tolist()

    async def __call__(self, request):
        return await self.predict(np.asarray(await request.json(), dtype=float))


def main() -> None:
    x, y = make_data(2000, seed=0)
    w, b = train(x, y)
    path = os.path.join(tempfile.mkdtemp(prefix="serve-clf-"), "model.npz")
    np.savez(path, w=w, b=b)

    p2p.init(num_cpus=2)
    serve.start(http_options={"port": 0})
    (base,) = serve.proxy_urls().values()
    t0 = time.monotonic()
    handle = serve.run(Classifier.bind(path), name="clf", route_prefix="/clf")
    print(f"deployed 2 replicas in {time.monotonic() - t0:.1f} s; HTTP at {base}/clf")
    print("handle call, predict([0.1, 2.2]) ->", handle.predict.remote([0.1, 2.2]).result())

    xt, yt = make_data(200, seed=1)

    async def predict_all():
        loop = asyncio.get_running_loop()

        def one(row):
            req = urllib.request.Request(base + "/clf", data=json.dumps(row.tolist()).encode(), method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        return await asyncio.gather(*(loop.run_in_executor(None, one, row) for row in xt))

    preds = np.array(asyncio.run(predict_all()))
    print(f"accuracy over HTTP on 200 held-out points: {np.mean(preds == yt):.3f}")

    res = asyncio.run(loadgen.run_load(base + "/clf", body=[0.5, 0.5], duration_s=4, concurrency=16))
    print(f"load test: {res.summary()}")
    serve.shutdown()
    p2p.shutdown()


if __name__ == "__main__":
    main()

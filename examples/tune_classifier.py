"""Tune a small numpy MLP on a synthetic 40-feature classification set with ASHA, across the cluster.

    python examples/tune_classifier.py               # embedded peer with this machine's CPUs
    python examples/tune_classifier.py --address auto --samples 32
    python examples/tune_classifier.py --plot curves.png   # learning curves of all trials (matplotlib)

Prints the live progress (a table on a terminal, a line per change otherwise), the best config, and the wall
time of the tuning run against running the same trials, for the same number of epochs, one after another.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread per trial: trials are the parallelism

import numpy as np  # noqa: E402

import p2pcompute as p2p  # noqa: E402
from p2pcompute.mlkit import tune  # noqa: E402

N_FEATURES = 40
MAX_EPOCHS = 27


def make_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((12000, N_FEATURES))
    w1 = rng.standard_normal((N_FEATURES, 8))
    logits = np.tanh(x @ w1) @ rng.standard_normal(8) + 0.3 * rng.standard_normal(12000)
    y = (logits > 0).astype(np.float64)
    return x[:9600], y[:9600], x[9600:], y[9600:]


def init_params(config, rng):
    h = config["hidden"]
    return {"w1": rng.standard_normal((N_FEATURES, h)) * np.sqrt(2 / N_FEATURES), "b1": np.zeros(h),
            "w2": rng.standard_normal(h) * np.sqrt(1 / h), "b2": 0.0}


def forward(p, x):
    a = np.maximum(x @ p["w1"] + p["b1"], 0)
    return a, 1 / (1 + np.exp(-(a @ p["w2"] + p["b2"])))


def epoch(p, config, x, y, rng):
    """One epoch of minibatch SGD with L2, in place."""
    order = rng.permutation(len(x))
    lr, l2, bs = config["lr"], config["l2"], config["batch_size"]
    for i in range(0, len(x), bs):
        idx = order[i:i + bs]
        xb, yb = x[idx], y[idx]
        a, prob = forward(p, xb)
        g = (prob - yb) / len(idx)
        ga = np.outer(g, p["w2"]) * (a > 0)
        p["w2"] -= lr * (a.T @ g + l2 * p["w2"])
        p["b2"] -= lr * g.sum()
        p["w1"] -= lr * (xb.T @ ga + l2 * p["w1"])
        p["b1"] -= lr * ga.sum(axis=0)


def evaluate(p, x, y):
    _, prob = forward(p, x)
    prob = np.clip(prob, 1e-7, 1 - 1e-7)
    return float(np.mean((prob > 0.5) == y)), float(-np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob)))


def train(config, epochs, report):
    """Train for `epochs` (resuming from `report`'s checkpoint when tuning) and report every epoch."""
    x, y, xv, yv = make_data()
    rng = np.random.default_rng(config["seed"])
    ckpt = tune.get_checkpoint() if report is tune.report else None
    start = 0
    if ckpt:
        state = ckpt.to_dict()
        p, start = state["params"], state["epoch"]
    else:
        p = init_params(config, rng)
    for e in range(start, epochs):
        epoch(p, config, x, y, rng)
        acc, loss = evaluate(p, xv, yv)
        report({"val_acc": acc, "val_loss": loss},
               checkpoint=tune.Checkpoint.from_dict({"params": p, "epoch": e + 1}) if report is tune.report else None)


def trainable(config):
    train(config, MAX_EPOCHS, tune.report)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", default=None)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--plot", default=None, metavar="PNG", help="write every trial's learning curve here")
    args = ap.parse_args()
    p2p.init(address=args.address)
    storage = args.storage or tempfile.mkdtemp(prefix="tune_classifier_")

    t0 = time.perf_counter()
    grid = tune.Tuner(
        trainable,
        param_space={"lr": tune.loguniform(1e-3, 1.0), "l2": tune.loguniform(1e-6, 1e-1),
                     "hidden": tune.choice([8, 16, 32, 64]), "batch_size": tune.choice([32, 64, 128]), "seed": 0},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", num_samples=args.samples, seed=1,
                                    scheduler=tune.schedulers.ASHAScheduler(max_t=MAX_EPOCHS, grace_period=3,
                                                                            reduction_factor=3)),
        run_config=tune.RunConfig(name="classifier", storage_path=storage,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1))).fit()
    tuned_s = time.perf_counter() - t0

    best = grid.get_best_result()
    print(f"\nbest config: {best.config}")
    print(f"best val_acc {best.metrics['val_acc']:.3f} after {best.metrics['training_iteration']} epochs "
          f"({grid.num_terminated} trials, {grid.num_errors} errors; results in {grid.experiment_path})")

    if args.plot:
        print(f"learning curves: {tune.plot_learning_curves(grid, 'val_acc', args.plot)}")

    # The same trials, each for the epochs it ran under ASHA, one after another in this process.
    t0 = time.perf_counter()
    for r in grid:
        train(r.config, r.metrics["training_iteration"], lambda metrics, checkpoint=None: None)
    sequential_s = time.perf_counter() - t0
    cpus = p2p.cluster_resources().get("CPU", 1)
    print(f"wall time: tuned across the cluster ({cpus:g} CPUs) {tuned_s:.1f} s, "
          f"same trials one after another {sequential_s:.1f} s ({sequential_s / tuned_s:.1f}x)")


if __name__ == "__main__":
    main()

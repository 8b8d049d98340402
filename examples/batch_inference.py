"""Batch inference over a directory of .npy files with p2pcompute.mlkit.data.

    python examples/batch_inference.py [--files 16] [--rows 50000]

Writes `--files` .npy feature files (rows x 16 float32) into a temporary directory, then scores every row
with a linear "model" loaded once per actor of a pool of 1-2 actors (`map_batches` with a class), writes the
predictions as .npy files, and prints the throughput and the per-operator stats. Blocks stream: each file is
read by a task, scored where it was read, and written from there.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit import data

FEATURES = 16


class LinearModel:
    """Stands for a model that is expensive to load: built once per actor, then called on batches."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=FEATURES).astype(np.float32)
        self.b = np.float32(0.1)

    def __call__(self, batch):
        return {"score": batch["features"] @ self.w + self.b}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--rows", type=int, default=50_000, help="rows per file")
    args = ap.parse_args()

    p2p.init()
    with tempfile.TemporaryDirectory() as root:
        inputs, outputs = os.path.join(root, "features"), os.path.join(root, "scores")
        os.makedirs(inputs)
        rng = np.random.default_rng(0)
        for i in range(args.files):
            np.save(os.path.join(inputs, f"part_{i:03d}.npy"),
                    rng.random((args.rows, FEATURES), dtype=np.float32))

        t0 = time.perf_counter()
        ds = (data.read_npy(inputs, column="features")
              .map_batches(LinearModel, fn_constructor_args=(42,), concurrency=(1, 2), batch_size=10_000))
        written = ds.write_npy(outputs, column="score")
        elapsed = time.perf_counter() - t0

        total_rows = args.files * args.rows
        scores = data.read_npy(outputs).to_numpy()
        print(f"scored {total_rows:,} rows from {args.files} files in {elapsed:.2f} s "
              f"({total_rows / elapsed:,.0f} rows/s); wrote {len(written)} files")
        print(f"scores: mean {scores.mean():.4f}, min {scores.min():.4f}, max {scores.max():.4f}")
        print(ds.stats())


if __name__ == "__main__":
    main()

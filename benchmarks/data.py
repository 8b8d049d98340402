"""Batch inference benchmark, side by side in one run: p2pcompute data vs Ray Data vs one process.

    python benchmarks/data.py                           # modest: 2M rows (the machine is shared)
    python benchmarks/data.py --rows 20000000 --repeat 3   # the issue's size: 20M rows x 16 features

The workload: rows of 16 float32 features made from their ids (a cheap deterministic hash), scored by a
numpy linear model (`x @ w + b`) in batches of 10,000 rows, and the predictions summed by the consumer.
Features are made inside the pipeline (`range` -> `map_batches(make)` -> `map_batches(predict)`) so the
comparison measures the engines, not a disk. "one process" is the same loop in a plain Python process.
Both engines get 2 CPUs. Each system runs in a fresh subprocess; with --repeat the best is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

FEATURES = 16
BATCH = 10_000
W = np.linspace(-1.0, 1.0, FEATURES, dtype=np.float32)
B0 = np.float32(0.5)


def make(batch):
    ids = np.asarray(batch["id"], dtype=np.int64)
    x = ((ids[:, None] * 2654435761 + np.arange(FEATURES)) % 1000).astype(np.float32) / 1000.0
    return {"x": x}


def predict(batch):
    return {"y": batch["x"] @ W + B0}


def expected_sum(rows: int) -> float:
    total = 0.0
    for start in range(0, rows, 1_000_000):
        ids = np.arange(start, min(rows, start + 1_000_000))
        total += float(predict(make({"id": ids}))["y"].astype(np.float64).sum())
    return total


def run(system: str, rows: int) -> dict:
    t0 = time.perf_counter()
    if system == "one-process":
        setup_s = 0.0
        total = 0.0
        for start in range(0, rows, BATCH):
            ids = np.arange(start, min(rows, start + BATCH))
            total += float(predict(make({"id": ids}))["y"].astype(np.float64).sum())
    elif system == "p2pcompute":
        import p2pcompute as p2p
        from p2pcompute.mlkit import data
        p2p.init(num_cpus=2)
        # Both workers started and warm: enough blocks that each CPU runs some.
        data.range(8000, override_num_blocks=8).map_batches(make).map_batches(predict).count()
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = data.range(rows).map_batches(make, batch_size=BATCH).map_batches(predict, batch_size=BATCH)
        total = 0.0
        for batch in ds.iter_batches(batch_size=None, prefetch_batches=2):
            total += float(batch["y"].astype(np.float64).sum())
    elif system == "ray-data":
        import ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ray.data.range(8000, override_num_blocks=8).map_batches(make).map_batches(predict).count()
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = ray.data.range(rows).map_batches(make, batch_size=BATCH).map_batches(predict, batch_size=BATCH)
        total = 0.0
        for batch in ds.iter_batches(batch_size=None, prefetch_batches=2):
            total += float(batch["y"].astype(np.float64).sum())
    else:
        raise ValueError(system)
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "rows_per_s": rows / elapsed, "setup_s": setup_s, "sum": total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.child[0], int(args.child[1]))))
        return
    systems = args.only or ["p2pcompute", "ray-data", "one-process"]
    import importlib.util
    if importlib.util.find_spec("ray") is None and "ray-data" in systems:
        systems.remove("ray-data")
    expect = expected_sum(args.rows)
    report = {"rows": args.rows, "features": FEATURES, "batch": BATCH, "results": {}}
    for system in systems:
        best = None
        for _ in range(args.repeat):
            proc = subprocess.run([sys.executable, __file__, "--child", system, str(args.rows)], capture_output=True,
                                  text=True, timeout=1800, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            if proc.returncode != 0:
                print(f"{system} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if not np.isclose(r["sum"], expect, rtol=1e-4):
                print(f"{system}: wrong sum {r['sum']} (expected {expect})", file=sys.stderr)
                continue
            best = r if best is None or r["seconds"] < best["seconds"] else best
        report["results"][system] = best
    if args.json:
        print(json.dumps(report))
        return
    print(f"Batch inference: {args.rows:,} rows x {FEATURES} features, batches of {BATCH:,}, 2 CPUs")
    mine = report["results"].get("p2pcompute")
    for system, r in report["results"].items():
        if r is None:
            continue
        ratio = (f"  (p2pcompute: {mine['rows_per_s'] / r['rows_per_s']:.2f}x its rows/s)"
                 if mine and system != "p2pcompute" else "")
        print(f"  {system:12s} {r['seconds']:.2f} s = {r['rows_per_s']:,.0f} rows/s{ratio}")


if __name__ == "__main__":
    main()

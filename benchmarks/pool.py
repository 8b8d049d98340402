"""Drop-in benchmarks, side by side in one run: Pool.map and a Dask reduction.

    python benchmarks/pool.py                  # modest sizes (the machine is shared)
    python benchmarks/pool.py --calls 100000 --chunks 2000 --repeat 3     # the issue's sizes

1. `Pool(2).map` of `--calls` tiny calls (x -> x*x) with default chunking: p2pcompute's Pool (actors on an
   embedded 2-CPU peer) vs `multiprocessing.Pool(2)` vs `ray.util.multiprocessing.Pool(2)` (2-CPU Ray).
   Pool start-up is timed separately from the map.
2. A `--chunks`-chunk dask array reduction (`da.ones(chunks * 1000, chunks=1000).sum()`, one sum task per
   chunk and a tree of partial sums) on p2pcompute's Dask scheduler vs Dask's threaded scheduler vs
   `distributed` (a LocalCluster of 2 single-threaded worker processes).

Each system runs in a fresh subprocess; with --repeat the best figure of each is kept. Figures go to stdout
as a table and, with --json, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def square(x):
    return x * x


def bench_pool(system: str, calls: int) -> dict:
    t0 = time.perf_counter()
    if system == "p2pcompute":
        import p2pcompute as p2p
        p2p.init(num_cpus=2)
        from p2pcompute.mlkit.pool import Pool
        pool = Pool(2)
    elif system == "multiprocessing":
        import multiprocessing
        pool = multiprocessing.Pool(2)
    elif system == "ray":
        import ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        from ray.util.multiprocessing import Pool as RayPool
        pool = RayPool(2)
    else:
        raise ValueError(system)
    pool.map(square, range(100))  # workers started and warm
    startup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = pool.map(square, range(calls))
    map_s = time.perf_counter() - t0
    assert out[-1] == (calls - 1) ** 2
    pool.terminate()
    return {"startup_s": startup_s, "map_s": map_s, "calls_per_s": calls / map_s}


def bench_dask(system: str, chunks: int) -> dict:
    import dask.array as da
    x = da.ones(chunks * 1000, chunks=1000).sum()
    if system == "p2pcompute":
        import p2pcompute as p2p
        p2p.init(num_cpus=2)
        from p2pcompute.mlkit.dask import get
        scheduler, client = get, None
    elif system == "dask-threads":
        scheduler, client = "threads", None
    elif system == "dask-distributed":
        from distributed import Client, LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        scheduler = None
    else:
        raise ValueError(system)
    da.ones(10_000, chunks=1000).sum().compute(scheduler=scheduler)  # warm
    t0 = time.perf_counter()
    value = x.compute(scheduler=scheduler) if scheduler is not None else x.compute()
    elapsed = time.perf_counter() - t0
    assert value == chunks * 1000
    if client is not None:
        client.close()
    return {"seconds": elapsed, "chunks_per_s": chunks / elapsed}


def _run_child(kind: str, system: str, size: int) -> dict | None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, __file__, "--child", kind, system, str(size)], capture_output=True,
                          text=True, env=env, timeout=900)
    if proc.returncode != 0:
        print(f"  {kind}/{system} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _best(results: list, key: str, lower: bool) -> dict | None:
    results = [r for r in results if r]
    if not results:
        return None
    return (min if lower else max)(results, key=lambda r: r[key])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--chunks", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        kind, system, size = args.child
        fn = bench_pool if kind == "pool" else bench_dask
        print(json.dumps(fn(system, int(size))))
        return
    report: dict = {"calls": args.calls, "chunks": args.chunks, "pool": {}, "dask": {}}
    for system in ("p2pcompute", "multiprocessing", "ray"):
        if system == "ray" and not _installed("ray"):
            continue
        report["pool"][system] = _best([_run_child("pool", system, args.calls) for _ in range(args.repeat)],
                                       "map_s", lower=True)
    if _installed("dask"):
        for system in ("p2pcompute", "dask-threads", "dask-distributed"):
            if system == "dask-distributed" and not _installed("distributed"):
                continue
            report["dask"][system] = _best([_run_child("dask", system, args.chunks) for _ in range(args.repeat)],
                                           "seconds", lower=True)
    if args.json:
        print(json.dumps(report))
        return
    print(f"Pool.map of {args.calls:,} tiny calls, default chunking, 2 processes")
    mine = report["pool"].get("p2pcompute")
    for system, r in report["pool"].items():
        if r is None:
            continue
        ratio = f"  (p2pcompute is {r['map_s'] / mine['map_s']:.2f}x its speed)" if mine and system != "p2pcompute" else ""
        print(f"  {system:16s} map {r['map_s']:.3f} s = {r['calls_per_s']:,.0f} calls/s; start-up "
              f"{r['startup_s']:.2f} s{ratio}")
    if report["dask"]:
        print(f"Dask array reduction over {args.chunks:,} chunks")
        mine = report["dask"].get("p2pcompute")
        for system, r in report["dask"].items():
            if r is None:
                continue
            ratio = f"  (p2pcompute takes {mine['seconds'] / r['seconds']:.2f}x its time)" if mine and system != "p2pcompute" else ""
            print(f"  {system:16s} {r['seconds']:.3f} s = {r['chunks_per_s']:,.0f} chunks/s{ratio}")


def _installed(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    main()

"""mlkit.serve side by side with Ray Serve: HTTP requests/s and latency on loopback, on this machine.

    python benchmarks/serve.py                 # p2pcompute, then Ray Serve if installed
    python benchmarks/serve.py --only p2p      # or --only ray
    python benchmarks/serve.py --kill          # kill -9 of a replica's peer under load, 3 local peers

Cases (each a bounded load: a fixed duration, then it stops): a no-op deployment with 1 and 2 replicas, at
saturation (closed loop, `--concurrency` connections) and at half of the saturated rate (open loop); and a
numpy linear model with `@serve.batch`, rows/s at saturation. `--kill` starts three local peers (`p2p start` /
`p2p join`), drives a no-op deployment with 3 replicas through one peer's proxy (closed loop), kills another
peer that hosts a replica with SIGKILL, and reports failed requests, the throughput dip and the time until
throughput is back to 90% of its level before the kill (Ray Serve is not measured here: it has no multi-peer
setup on one machine without a head node to spare). The load generator is
`p2pcompute.mlkit.serve.loadgen` (asyncio, keep-alive connections) for both systems. The machine is shared and
noisy: compare the two columns of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time

import numpy as np

from p2pcompute.mlkit.serve import loadgen

ROWS = [[0.1 * i for i in range(16)] for _ in range(1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url: str, body, args) -> dict:
    asyncio.run(loadgen.run_load(url, body=body, duration_s=1.0, concurrency=args.concurrency))  # warm up
    sat = asyncio.run(loadgen.run_load(url, body=body, duration_s=args.seconds, concurrency=args.concurrency))
    half_rate = max(1.0, sat.rate_per_s() / 2)
    half = asyncio.run(loadgen.run_load(url, body=body, duration_s=args.seconds, concurrency=args.concurrency,
                                        rate_per_s=half_rate))
    return {"sat_rps": sat.rate_per_s(), "sat_p50_ms": sat.percentile_ms(50), "sat_p99_ms": sat.percentile_ms(99),
            "sat_failed": sat.failed, "half_rps": half.rate_per_s(), "half_p50_ms": half.percentile_ms(50),
            "half_p99_ms": half.percentile_ms(99), "half_failed": half.failed}


def bench_p2p(args) -> dict:
    import p2pcompute as p2p
    from p2pcompute.mlkit import serve
    p2p.init(num_cpus=2)
    serve.start(http_options={"port": free_port()})
    (base,) = serve.proxy_urls().values()
    out = {}

    @serve.deployment
    class Noop:
        async def __call__(self, request):
            return "ok"

    @serve.deployment(max_ongoing_requests=64)
    class Linear:
        def __init__(self):
            self.w = np.random.default_rng(0).normal(size=(16, 4))

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def predict(self, rows):
            return (np.asarray(rows) @ self.w).tolist()

        async def __call__(self, request):
            return await self.predict(await request.json())

    for n in (1, 2):
        serve.run(Noop.options(num_replicas=n).bind(), name="noop", route_prefix="/noop")
        out[f"noop, {n} replica(s)"] = measure(base + "/noop", None, args)
    serve.delete("noop")
    serve.run(Linear.bind(), name="linear", route_prefix="/linear")
    out["numpy model, @batch"] = measure(base + "/linear", ROWS[0], args)
    serve.shutdown()
    p2p.shutdown()
    return out


def bench_ray(args) -> dict:
    import ray
    from ray import serve
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    out = {}

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Noop:
        async def __call__(self, request):
            return "ok"

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    class Linear:
        def __init__(self):
            self.w = np.random.default_rng(0).normal(size=(16, 4))

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def predict(self, rows):
            return (np.asarray(rows) @ self.w).tolist()

        async def __call__(self, request):
            return await self.predict(await request.json())

    for n in (1, 2):
        serve.run(Noop.options(num_replicas=n).bind(), name="noop", route_prefix="/noop")
        out[f"noop, {n} replica(s)"] = measure(base + "/noop", None, args)
    serve.delete("noop")
    serve.run(Linear.bind(), name="linear", route_prefix="/linear")
    out["numpy model, @batch"] = measure(base + "/linear", ROWS[0], args)
    serve.shutdown()
    ray.shutdown()
    return out


KILL_DRIVER = r"""
import asyncio, json, os, signal, sys, threading, time
import p2pcompute as p2p
from p2pcompute.mlkit import serve
from p2pcompute.mlkit.serve import loadgen, state
address, token_file, pids, seconds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
p2p.init(address=address, token=open(token_file).read().strip())
here = p2p.get_runtime_context().get_node_id()

@serve.deployment(num_replicas=3, max_ongoing_requests=16)
class Noop:
    async def __call__(self, request):
        return "ok"

serve.start(http_options={"port": 0})
serve.run(Noop.bind(), name="noop", route_prefix="/noop")
url = serve.proxy_urls()[here] + "/noop"
victim = sorted(s.value["node"] for s in state.list_slots("noop") if s.value["node"] != here)[0]
box = {}
t = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(
    loadgen.run_load(url, duration_s=seconds, concurrency=8))))
t.start()
time.sleep(seconds / 3)
kill_at = time.monotonic()
os.kill(pids[victim], signal.SIGKILL)
t.join()
res = box["r"]
kill_s = kill_at - (time.monotonic() - res.elapsed_s)
refill_deadline = time.monotonic() + 60
while time.monotonic() < refill_deadline:
    if sum(1 for s in state.list_slots("noop", linearizable=True)
           if s.state == "READY" and s.value["node"] != victim) == 3:
        break
    time.sleep(0.1)
print("RESULT " + json.dumps({"finished_at_s": res.finished_at_s, "statuses": res.statuses, "kill_s": kill_s,
                              "refilled_s": time.monotonic() - kill_at}))
"""


def bench_kill(args) -> None:
    import os
    import shutil
    import tempfile
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                                    "integration"))
    from cluster_util import Cluster
    base = tempfile.mkdtemp(prefix="p2pk-")
    cluster = Cluster(base)
    try:
        peers = [cluster.start(num_cpus=1) for _ in range(3)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                sum(1 for s in p.states().values() if s == "alive") == 3 for p in peers):
            time.sleep(0.2)
        pids = json.dumps({p.peer_id: p.pid for p in peers})
        script = os.path.join(base, "kill_driver.py")
        with open(script, "w") as f:
            f.write(KILL_DRIVER)
        proc = subprocess.run([sys.executable, script, peers[0].address, cluster.token_file, pids,
                               str(args.seconds * 5)], capture_output=True, text=True, timeout=600, cwd=base)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"kill run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            return
        r = json.loads(line[-1][7:])
    finally:
        cluster.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    kill_s, bin_s = r["kill_s"], 0.5
    ok_times = [t for t, s in zip(r["finished_at_s"], r["statuses"]) if s == 200]
    before = [t for t in ok_times if 1.0 <= t < kill_s]
    base_rate = len(before) / max(1e-9, kill_s - 1.0)
    end = max(r["finished_at_s"])
    bins = []
    t = kill_s
    while t + bin_s <= end:
        bins.append(sum(1 for x in ok_times if t <= x < t + bin_s) / bin_s)
        t += bin_s
    low = [i for i, rate in enumerate(bins) if rate < 0.9 * base_rate]
    back = (low[-1] + 1) * bin_s if low else 0.0      # after the last window below 90%: back for good
    low_s = len(low) * bin_s
    failed = sum(1 for s in r["statuses"] if s != 200)
    print("kill -9 of a replica's peer under load (3 peers, 1 CPU each, 8 connections):")
    print(f"  requests {len(r['statuses'])}, failed {failed} ({100 * failed / len(r['statuses']):.2f}%)")
    print(f"  throughput before the kill {base_rate:.0f}/s; lowest 0.5 s window after it "
          f"{min(bins) if bins else float('nan'):.0f}/s")
    print(f"  windows below 90% of it: {low_s:.1f} s in all; back to >= 90% for good {back:.1f} s after the kill "
          f"(of {end - kill_s:.1f} s measured); slot refilled on a live peer after {r['refilled_s']:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["p2p", "ray"])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each measured load")
    ap.add_argument("--concurrency", type=int, default=16, help="connections of the load generator")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--kill", action="store_true", help="only the kill-under-load measurement")
    args = ap.parse_args()
    if args.kill:
        bench_kill(args)
        return
    if args.only:
        result = bench_p2p(args) if args.only == "p2p" else bench_ray(args)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for system in ("p2p", "ray"):
        if system == "ray":
            try:
                import importlib
                importlib.import_module("ray.serve")
            except ImportError:
                print("ray[serve] is not installed: only p2pcompute measured")
                break
        cmd = [sys.executable, __file__, "--only", system, "--seconds", str(args.seconds),
               "--concurrency", str(args.concurrency)]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"{system} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            continue
        results[system] = json.loads(line[-1][7:])
        print(f"{system}: measured in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
    print("| case | p2pcompute req/s | Ray Serve req/s | ratio | p2p p50 / p99 ms | Ray p50 / p99 ms | "
          "half load p2p p50 / p99 | half load Ray p50 / p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for case, p in results.get("p2p", {}).items():
        r = results.get("ray", {}).get(case)
        ratio = f"{p['sat_rps'] / r['sat_rps']:.1f}x" if r else "-"
        rr = f"{r['sat_rps']:.0f}" if r else "-"
        rl = f"{r['sat_p50_ms']:.1f} / {r['sat_p99_ms']:.1f}" if r else "-"
        rh = f"{r['half_p50_ms']:.1f} / {r['half_p99_ms']:.1f}" if r else "-"
        print(f"| {case} | {p['sat_rps']:.0f} | {rr} | {ratio} | {p['sat_p50_ms']:.1f} / {p['sat_p99_ms']:.1f} | "
              f"{rl} | {p['half_p50_ms']:.1f} / {p['half_p99_ms']:.1f} | {rh} |")
    failed = {s: sum(v["sat_failed"] + v["half_failed"] for v in res.values()) for s, res in results.items()}
    print(f"failed requests: {failed}")


if __name__ == "__main__":
    main()

"""Scheduling benchmark: one peer and three peers on loopback, side by side with Ray, in one run.

    python benchmarks/scheduling.py                       # p2pcompute and, if installed, Ray
    python benchmarks/scheduling.py --only p2pcompute --repeat 3

Workloads: async task throughput (10,000 no-op tasks), sync task latency (1,000 sequential get(f.remote())),
actor call throughput (10,000 async calls), and the time to drain 10,000 tasks of 1 ms against the ideal
(10,000 x 1 ms / CPU slots). "1 peer" has 2 CPU slots; "3 peers" has three peers of 1 slot each on this
machine (Ray: a head and two worker nodes from `ray.cluster_utils.Cluster`, the same slots). Each configuration
runs in a fresh process; with --repeat the best of each figure is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import local_peers

N_ASYNC = 10_000
N_SYNC = 1_000
N_ACTOR = 10_000
N_DRAIN = 10_000
DRAIN_S = 0.001


def workloads(mod, slots: int) -> dict:
    out = {}

    @mod.remote
    def noop(x=None):
        return x

    @mod.remote
    def sleep_1ms():
        time.sleep(DRAIN_S)

    @mod.remote
    class Actor:
        def call(self, x=None):
            return x

    mod.get([noop.remote(i) for i in range(500)])
    actor = Actor.remote()
    mod.get([actor.call.remote() for _ in range(200)])
    mod.get([sleep_1ms.remote() for _ in range(200)])

    t0 = time.perf_counter()
    mod.get([noop.remote(i) for i in range(N_ASYNC)])
    out["async_tasks"] = N_ASYNC / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(N_SYNC):
        mod.get(noop.remote(i))
    out["sync_latency_us"] = (time.perf_counter() - t0) / N_SYNC * 1e6
    t0 = time.perf_counter()
    mod.get([actor.call.remote(i) for i in range(N_ACTOR)])
    out["actor_calls"] = N_ACTOR / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    mod.get([sleep_1ms.remote() for _ in range(N_DRAIN)])
    drain = time.perf_counter() - t0
    ideal = N_DRAIN * DRAIN_S / slots
    out["drain_s"] = drain
    out["drain_vs_ideal"] = drain / ideal
    return out


# ---- p2pcompute -----------------------------------------------------------------------------------------

def run_p2p(peers: int) -> dict:
    import p2pcompute as p2p
    if peers == 1:
        p2p.init(num_cpus=2)
        try:
            return workloads(p2p, 2)
        finally:
            p2p.shutdown()
    homes, address, token = local_peers.start_peers(peers, cpus=1)
    try:
        p2p.init(address=address, token=token)
        deadline = time.monotonic() + 30
        while sum(n["Alive"] for n in p2p.nodes()) < peers and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            return workloads(p2p, peers)
        finally:
            p2p.shutdown()
    finally:
        local_peers.stop_peers(homes)


# ---- Ray ----------------------------------------------------------------------------------------------

def run_ray(peers: int) -> dict:
    import ray
    if peers == 1:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            return workloads(ray, 2)
        finally:
            ray.shutdown()
    # Several Ray nodes on one machine: Ray's own test utility starts a head and worker nodes.
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(peers - 1):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        try:
            return workloads(ray, peers)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


RUNNERS = {"p2pcompute": run_p2p, "ray": run_ray}
BETTER_HIGH = {"async_tasks", "actor_calls"}


def _child(name: str, peers: int) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--peers", str(peers)], capture_output=True,
                          text=True, timeout=1200)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    sys.stderr.write(f"{name} ({peers} peers) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}\n")
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", choices=list(RUNNERS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--peers", type=int, default=None)
    parser.add_argument("--child", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(RUNNERS[args.child](args.peers)), flush=True)
        os._exit(0)
    names = []
    for name in args.only or list(RUNNERS):
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True)
        if probe.returncode == 0:
            names.append(name)
    configs = [args.peers] if args.peers else [1, 3]
    results: dict = {}
    for _ in range(args.repeat):
        for peers in configs:
            for name in names:
                print(f"{name}, {peers} peer(s) ...", file=sys.stderr, flush=True)
                res = _child(name, peers)
                if res is None:
                    continue
                best = results.setdefault((name, peers), {})
                for k, v in res.items():
                    better = max if k in BETTER_HIGH else min
                    best[k] = v if k not in best else better(best[k], v)
    rows = [("async task throughput", "async_tasks", "{:,.0f}/s"), ("sync task latency", "sync_latency_us",
                                                                     "{:,.0f} us"),
            ("actor call throughput", "actor_calls", "{:,.0f}/s"), ("drain 10,000 x 1 ms", "drain_s", "{:.2f} s"),
            ("drain vs ideal", "drain_vs_ideal", "{:.2f}x")]
    for peers in configs:
        print(f"\n{peers} peer(s):\n")
        header = "| workload | " + " | ".join(names) + (" | p2pcompute vs ray |" if "ray" in names else " |")
        print(header)
        print("|" + "---|" * (len(names) + 1 + ("ray" in names)))
        for title, key, fmt in rows:
            cells = [fmt.format(results[(n, peers)][key]) if (n, peers) in results else "-" for n in names]
            ratio = ""
            if "ray" in names and (("p2pcompute", peers) in results) and (("ray", peers) in results):
                a, b = results[("p2pcompute", peers)][key], results[("ray", peers)][key]
                if key == "drain_vs_ideal":
                    ratio = " | "
                else:
                    ratio = f" | {a / b:.1f}x |" if key in BETTER_HIGH else f" | {b / a:.1f}x |"
            print(f"| {title} | " + " | ".join(cells) + (ratio if ratio else " |"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{n}/{p}": r for (n, p), r in results.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

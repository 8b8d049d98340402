"""Open-loop scheduling on real processes: Poisson arrivals, exponential service, time in system vs M/M/c.

    python benchmarks/open_loop.py                              # 3 local peers x 2 slots, loads 0.5 0.8 0.9
    python benchmarks/open_loop.py --peers 1 --loads 0.9 --seconds 120

Peers are started with `p2p start` / `p2p join` on this machine (each with `--num-cpus 2`), and one driver
attached to the first submits tasks at exponentially distributed intervals, at `load` x slots / mean service
per second, whatever is still running: an open loop, as users arriving independently would. A task sleeps its
service time (drawn by the driver, exponential with mean `--service-ms`), so slots are not limited by this
machine's two cores. Time in system runs from the task's scheduled arrival to the moment its result is known
at the driver. The simulator's tasks workload measures the same quantity at 100-1,000 peers (see
docs/simulations.md, "Scheduling quality"); the model here is one central queue over every slot, M/M/c, the
best any scheduler could do.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time

from local_peers import start_peers, stop_peers


def erlang_c(c: int, rho: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with utilisation rho."""
    a = c * rho
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= a / k
        total += term
    last = term * a / c / (1 - rho)
    return last / (total + last)


def mmc_mean(c: int, rho: float) -> float:
    """Mean time in system of M/M/c, in service times."""
    return 1 + erlang_c(c, rho) / (c * (1 - rho))


def run_load(p2p, sleeper, load: float, slots: int, service_s: float, seconds: float, seed: int) -> dict:
    rng = random.Random(seed)
    rate = load * slots / service_s
    done_at: dict[int, float] = {}
    lock = threading.Lock()
    all_done = threading.Event()
    arrivals: list[float] = []
    refs = []
    t0 = time.monotonic() + 0.2
    t = t0
    while t - t0 < seconds:
        t += rng.expovariate(rate)
        arrivals.append(t)
    total = len(arrivals)

    def finished(i):
        def callback(_fut):
            with lock:
                done_at[i] = time.monotonic()
                if len(done_at) == total:
                    all_done.set()
        return callback

    for i, at in enumerate(arrivals):
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the arrival schedule: open loop, whatever is still running
        ref = sleeper.remote(rng.expovariate(1 / service_s))
        ref.future().add_done_callback(finished(i))
        refs.append(ref)
    all_done.wait(timeout=seconds * 20 + 60)
    times = sorted((done_at[i] - arrivals[i]) / service_s for i in done_at)
    n = len(times)
    return {"load": load, "tasks": total, "finished": n,
            "mean": sum(times) / n, "p50": times[n // 2], "p99": times[min(n - 1, int(n * 0.99))],
            "mmc_mean": mmc_mean(slots, load)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="slots per peer")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8, 0.9])
    parser.add_argument("--service-ms", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="arrivals per load")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for load in args.loads:
        if not 0 < load < 1:
            parser.error(f"every load must be between 0 and 1 (exclusive), not {load}")
    import p2pcompute as p2p
    homes, address, token = start_peers(args.peers, args.cpus, prefix="p2p-openloop-")
    slots = args.peers * args.cpus
    results = []
    try:
        p2p.init(address=address, token=token)
        deadline = time.monotonic() + 30
        while sum(n["Alive"] for n in p2p.nodes()) < args.peers and time.monotonic() < deadline:
            time.sleep(0.1)

        @p2p.remote
        def sleeper(s):
            time.sleep(s)

        p2p.get([sleeper.remote(0.01) for _ in range(4 * slots)])  # workers started on every peer
        for k, load in enumerate(args.loads):
            r = run_load(p2p, sleeper, load, slots, args.service_ms / 1000, args.seconds, args.seed + k)
            results.append(r)
            print(f"load {load:.2f}: {r['finished']}/{r['tasks']} tasks; time in system (x service) mean "
                  f"{r['mean']:.2f} p50 {r['p50']:.2f} p99 {r['p99']:.2f}; M/M/{slots} mean {r['mmc_mean']:.2f}",
                  flush=True)
        p2p.shutdown()
    finally:
        stop_peers(homes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peers": args.peers, "slots": slots, "service_ms": args.service_ms, "results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

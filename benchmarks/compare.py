"""Side-by-side benchmark: the same workloads on p2pcompute, Ray, Dask and multiprocessing.

    python benchmarks/compare.py                      # every framework that is installed
    python benchmarks/compare.py --only p2pcompute ray --repeat 3 --json out.json
    python benchmarks/compare.py --only p2pcompute ray pyzmq    # with the bare pyzmq round trip as the floor

Each framework runs in its own fresh process, one after another, so they never compete for the CPUs; with
--repeat the frameworks alternate (p2p, ray, p2p, ray, ...) and the best run of each workload is kept,
which is what a noisy shared machine calls for. The table prints each figure and the ratio to p2pcompute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

N_SYNC = 1000
N_ASYNC = 10_000
N_ACTOR_SYNC = 1000
N_ACTOR_ASYNC = 10_000
BIG = 100 * 1024 * 1024 // 8  # float64 elements in 100 MB
N_SLEEP = 200
SLEEP_S = 0.010
N_PARENTS = 20
N_CHILDREN = 50

WORKLOADS = [
    ("init", "s", "init time"),
    ("sync_tasks", "/s", f"{N_SYNC} sequential get(f.remote())"),
    ("async_tasks", "/s", f"{N_ASYNC} async no-op tasks"),
    ("sync_actor", "/s", f"{N_ACTOR_SYNC} sequential actor calls"),
    ("async_actor", "/s", f"{N_ACTOR_ASYNC} async actor calls"),
    ("put_100mb", "ms", "put of a 100 MB array"),
    ("get_100mb", "ms", "get of a 100 MB array"),
    ("task_100mb", "ms", "a task on a 100 MB argument"),
    ("sleep_tasks", "s", f"{N_SLEEP} tasks of {SLEEP_S * 1000:.0f} ms on 2 CPUs (ideal {N_SLEEP * SLEEP_S / 2:.1f} s)"),
    ("nested", "s", f"{N_PARENTS} tasks each getting {N_CHILDREN} children"),
]


def _timeit(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- Ray-style frameworks (p2pcompute and Ray share one script) ---------------------------------------------

def run_rayish(mod, init_kwargs: dict) -> dict:
    import numpy as np
    out = {}
    t0 = time.perf_counter()
    mod.init(**init_kwargs)
    out["init"] = time.perf_counter() - t0

    @mod.remote
    def noop(x=None):
        return x

    @mod.remote
    class Actor:
        def __init__(self):
            self.n = 0

        def call(self, x=None):
            self.n += 1
            return x

    @mod.remote
    def size_of(a):
        return a.nbytes

    @mod.remote
    def sleeper():
        time.sleep(SLEEP_S)

    @mod.remote
    def child(i):
        return i

    @mod.remote
    def parent(n):
        return sum(mod.get([child.remote(i) for i in range(n)]))

    # Warm up: workers started, functions exported, the actor placed.
    mod.get([noop.remote(i) for i in range(200)])
    actor = Actor.remote()
    mod.get([actor.call.remote() for _ in range(100)])
    mod.get([parent.remote(2) for _ in range(4)])

    dt = _timeit(lambda: [mod.get(noop.remote(i)) for i in range(N_SYNC)])
    out["sync_tasks"] = N_SYNC / dt
    dt = _timeit(lambda: mod.get([noop.remote(i) for i in range(N_ASYNC)]))
    out["async_tasks"] = N_ASYNC / dt
    dt = _timeit(lambda: [mod.get(actor.call.remote(i)) for i in range(N_ACTOR_SYNC)])
    out["sync_actor"] = N_ACTOR_SYNC / dt
    dt = _timeit(lambda: mod.get([actor.call.remote(i) for i in range(N_ACTOR_ASYNC)]))
    out["async_actor"] = N_ACTOR_ASYNC / dt

    arr = np.arange(BIG, dtype=np.float64)
    t0 = time.perf_counter()
    ref = mod.put(arr)
    out["put_100mb"] = (time.perf_counter() - t0) * 1000
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        got = mod.get(ref)
        best = min(best, time.perf_counter() - t0)
        assert got.shape == arr.shape
        del got
    out["get_100mb"] = best * 1000
    mod.get(size_of.remote(ref))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        assert mod.get(size_of.remote(ref)) == arr.nbytes
        best = min(best, time.perf_counter() - t0)
    out["task_100mb"] = best * 1000
    del ref

    out["sleep_tasks"] = _timeit(lambda: mod.get([sleeper.remote() for _ in range(N_SLEEP)]))
    out["nested"] = _timeit(lambda: mod.get([parent.remote(N_CHILDREN) for _ in range(N_PARENTS)]))
    mod.shutdown()
    return out


def run_p2pcompute() -> dict:
    import p2pcompute
    return run_rayish(p2pcompute, {"num_cpus": 2})


def run_ray() -> dict:
    import ray
    return run_rayish(ray, {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False})


# ---- Dask (tasks only: no actors in the same sense) ---------------------------------------------------------

def run_dask() -> dict:
    import numpy as np
    from dask.distributed import Client, LocalCluster, get_client, worker_client
    out = {}
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    out["init"] = time.perf_counter() - t0

    def noop(x=None):
        return x

    client.gather([client.submit(noop, i, pure=False) for i in range(200)])
    dt = _timeit(lambda: [client.submit(noop, i, pure=False).result() for i in range(N_SYNC)])
    out["sync_tasks"] = N_SYNC / dt
    dt = _timeit(lambda: client.gather([client.submit(noop, i, pure=False) for i in range(N_ASYNC)]))
    out["async_tasks"] = N_ASYNC / dt
    arr = np.arange(BIG, dtype=np.float64)
    t0 = time.perf_counter()
    [fut] = client.scatter([arr])
    out["put_100mb"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    fut.result()
    out["get_100mb"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    client.submit(lambda a: a.nbytes, fut, pure=False).result()
    out["task_100mb"] = (time.perf_counter() - t0) * 1000

    def sleeper(i):
        time.sleep(SLEEP_S)

    out["sleep_tasks"] = _timeit(lambda: client.gather([client.submit(sleeper, i, pure=False)
                                                        for i in range(N_SLEEP)]))

    def parent(n):
        with worker_client() as c:
            return sum(c.gather([c.submit(noop, i, pure=False) for i in range(n)]))

    out["nested"] = _timeit(lambda: client.gather([client.submit(parent, N_CHILDREN, pure=False)
                                                   for _ in range(N_PARENTS)]))
    client.close()
    cluster.close()
    del get_client
    return out


# ---- multiprocessing (a pool: no actors, no object store) ---------------------------------------------------

def _mp_noop(x=None):
    return x


def _mp_sleep(_):
    time.sleep(SLEEP_S)


def _mp_size(a):
    return a.nbytes


def run_multiprocessing() -> dict:
    import multiprocessing as mp
    import numpy as np
    out = {}
    t0 = time.perf_counter()
    pool = mp.get_context("spawn").Pool(2)
    pool.map(_mp_noop, range(2))
    out["init"] = time.perf_counter() - t0
    dt = _timeit(lambda: [pool.apply(_mp_noop, (i,)) for i in range(N_SYNC)])
    out["sync_tasks"] = N_SYNC / dt
    dt = _timeit(lambda: [r.get() for r in [pool.apply_async(_mp_noop, (i,)) for i in range(N_ASYNC)]])
    out["async_tasks"] = N_ASYNC / dt
    arr = np.arange(BIG, dtype=np.float64)
    t0 = time.perf_counter()
    pool.apply(_mp_size, (arr,))
    out["task_100mb"] = (time.perf_counter() - t0) * 1000
    out["sleep_tasks"] = _timeit(lambda: pool.map(_mp_sleep, range(N_SLEEP), chunksize=1))
    pool.close()
    pool.join()
    return out


# ---- the floor: a bare pyzmq request/reply between two processes ------------------------------------------

def _zmq_echo(address: str) -> None:
    import zmq
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.bind(address)
    while True:
        msg = sock.recv()
        sock.send(msg)
        if msg == b"stop":
            return


def run_pyzmq() -> dict:
    """The round trip no task system on this machine can beat: one REQ/REP message each way over a Unix
    socket, no serialization, no scheduling. Fills the two one-at-a-time rows, as their floor."""
    import multiprocessing as mp
    import tempfile
    import zmq
    address = f"ipc://{tempfile.mkdtemp(prefix='p2pzmq')}/echo"
    server = mp.get_context("spawn").Process(target=_zmq_echo, args=(address,), daemon=True)
    server.start()
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.connect(address)
    for _ in range(200):  # warm up: connected, both sides scheduled
        sock.send(b"x")
        sock.recv()
    n = 5 * N_SYNC
    dt = _timeit(lambda: [(sock.send(b"x"), sock.recv()) for _ in range(n)])
    sock.send(b"stop")
    sock.recv()
    server.join(5)
    return {"sync_tasks": n / dt, "sync_actor": n / dt}


RUNNERS = {"p2pcompute": run_p2pcompute, "ray": run_ray, "dask": run_dask, "multiprocessing": run_multiprocessing,
           "pyzmq": run_pyzmq}
IMPORTS = {"p2pcompute": "p2pcompute", "ray": "ray", "dask": "distributed", "multiprocessing": "multiprocessing",
           "pyzmq": "zmq"}


def _installed(name: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {IMPORTS[name]}"], capture_output=True)
    return probe.returncode == 0


def _run_child(name: str, timeout_s: float) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                          timeout=timeout_s)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    sys.stderr.write(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}\n")
    return None


def _better(key: str, a: float, b: float) -> float:
    unit = next(u for k, u, _ in WORKLOADS if k == key)
    return max(a, b) if unit == "/s" else min(a, b)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        if value < 1:
            return f"{value * 1000:,.0f} us"
        return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"
    return f"{value:.2f} s"


def table(results: dict[str, dict]) -> str:
    names = list(results)
    lines = ["| workload | " + " | ".join(names) + " | " +
             " | ".join(f"p2pcompute vs {n}" for n in names if n != "p2pcompute") + " |"]
    lines.append("|" + "---|" * (1 + len(names) + len(names) - 1))
    base = results.get("p2pcompute", {})
    for key, unit, title in WORKLOADS:
        cells = [_fmt(results[n].get(key), unit) for n in names]
        ratios = []
        for n in names:
            if n == "p2pcompute":
                continue
            a, b = base.get(key), results[n].get(key)
            if a is None or b is None or a == 0 or b == 0:
                ratios.append("-")
            elif unit == "/s":
                ratios.append(f"{a / b:.1f}x")
            else:
                ratios.append(f"{b / a:.1f}x")
        lines.append(f"| {title} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    lines.append("")
    lines.append("Ratios: how many times better p2pcompute is (higher throughput, or shorter time). Against pyzmq "
                 "(a bare request/reply round trip: the floor of the one-at-a-time rows) the ratio is the share of "
                 "that floor p2pcompute reaches.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", choices=list(RUNNERS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = RUNNERS[args.child]()
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)
    names = [n for n in (args.only or list(RUNNERS)) if _installed(n)]
    if "p2pcompute" in names:
        # Installed packages (Ray's, Dask's, or p2pcompute from `pip install`) carry compiled bytecode; an
        # editable checkout in an environment with PYTHONDONTWRITEBYTECODE set would compile every module in
        # every process it starts, and `init` would measure the compiler.
        import compileall
        import p2pcompute
        compileall.compile_dir(os.path.dirname(p2pcompute.__file__), quiet=1)
    results: dict[str, dict] = {n: {} for n in names}
    for round_no in range(args.repeat):
        for name in names:
            print(f"round {round_no + 1}/{args.repeat}: {name} ...", file=sys.stderr, flush=True)
            res = _run_child(name, timeout_s=900)
            if res is None:
                continue
            for key, value in res.items():
                prev = results[name].get(key)
                results[name][key] = value if prev is None else _better(key, prev, value)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                       "repeat": args.repeat}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Large objects on one machine: put, get, and tasks returning 100 MB, side by side with Ray in one run.

    python benchmarks/objects.py                    # p2pcompute and Ray (if installed), best of --repeat
    python benchmarks/objects.py --only p2pcompute --repeat 5 --mb 100

Each framework runs in its own fresh process, one after the other. Every figure is the best of `--repeat`
rounds (the machine is shared and noisy). The references to the previous round are dropped before the next
round starts, as a loop in a real program does, so freed objects' memory can be reused.

- `np.full` alone, `a.copy()` alone, and `np.full` + one copy: the floor a task returning a new array can
  reach is making it plus one copy into the store.
- put: `put` of an existing array. get after put: the first `get` of that ref.
- task returning: `get(make.remote())` where `make` returns `np.full(...)` (made, stored, mapped).
- get of a task's result: the first `get` of a finished task's 100 MB result (only the mapping).
- get from another local peer (p2pcompute: the result of a task pinned on a second peer on this machine,
  whose store the driver maps; Ray: one store per node, so the result of a task in another worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

WORKLOADS = [
    ("np_full", "np.full alone"),
    ("copy", "a.copy() of an existing array"),
    ("np_full_copy", "np.full + one copy"),
    ("put", "put"),
    ("get_after_put", "get after put"),
    ("task_return", "task returning the array (submit to value)"),
    ("get_task_result", "get of a finished task's result"),
    ("get_other_peer", "get of an object made on another local peer"),
]


def _rounds(repeat: int, step) -> float:
    """Best of `repeat` timed calls of `step()`, which returns its own elapsed seconds."""
    best = float("inf")
    for _ in range(repeat):
        best = min(best, step())
        time.sleep(0.05)  # let the frees of the round before land, as between steps of a real program
    return best * 1000


def measure(mod, n: int, repeat: int, other_node=None) -> dict:
    import numpy as np

    @mod.remote
    def make(n_elems, fill):
        return np.full(n_elems, fill)

    out = {}

    def full():
        t0 = time.perf_counter()
        np.full(n, 1.0)
        return time.perf_counter() - t0

    def full_copy():
        t0 = time.perf_counter()
        np.full(n, 1.0).copy()
        return time.perf_counter() - t0

    def copy():
        a = np.full(n, 1.0)
        t0 = time.perf_counter()
        a.copy()
        return time.perf_counter() - t0

    out["np_full"] = _rounds(repeat, full)
    out["copy"] = _rounds(repeat, copy)
    out["np_full_copy"] = _rounds(repeat, full_copy)

    gets = []

    def put():
        arr = np.full(n, 2.0)
        t0 = time.perf_counter()
        ref = mod.put(arr)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = mod.get(ref)
        gets.append(time.perf_counter() - t0)
        assert got.shape == arr.shape and got[-1] == 2.0
        return dt

    out["put"] = _rounds(repeat, put)
    out["get_after_put"] = min(gets) * 1000
    mod.get(make.remote(10, 0.0))  # a worker ready

    def task_return():
        t0 = time.perf_counter()
        got = mod.get(make.remote(n, 3.0))
        dt = time.perf_counter() - t0
        assert got.shape == (n,) and got[-1] == 3.0
        return dt

    out["task_return"] = _rounds(repeat, task_return)

    def get_result(fn):
        def step():
            ref = fn.remote(n, 4.0)
            mod.wait([ref], timeout=120)
            t0 = time.perf_counter()
            got = mod.get(ref)
            dt = time.perf_counter() - t0
            assert got.shape == (n,) and got[-1] == 4.0
            return dt
        return step

    out["get_task_result"] = _rounds(repeat, get_result(make))
    if other_node is not None:
        remote_make = make.options(scheduling_strategy=other_node)
        mod.get(remote_make.remote(10, 0.0))
        out["get_other_peer"] = _rounds(repeat, get_result(remote_make))
    else:
        out["get_other_peer"] = out["get_task_result"]
    return out


def run_p2pcompute(mb: int, repeat: int) -> dict:
    import p2pcompute as p2p
    from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from transfer import start_peers, stop_peers

    base = tempfile.mkdtemp(prefix="p2p-objects-", dir="/tmp")
    peers = start_peers(2, base)
    try:
        p2p.init(address=f"127.0.0.1:{peers[0]['port']}", token=peers[0]["token"])
        deadline = time.monotonic() + 30
        while sum(nd["Alive"] for nd in p2p.nodes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        # Local tasks stay on the driver's peer; the "other peer" ones are pinned to the second peer.
        out = measure(_Pinned(p2p, On(peers[0]["id"])), mb * 2**20 // 8, repeat, other_node=On(peers[1]["id"]))
        p2p.shutdown()
        return out
    finally:
        stop_peers(peers)
        shutil.rmtree(base, ignore_errors=True)


class _Pinned:
    """The module, with `remote` functions placed on one peer unless `.options` says otherwise."""

    def __init__(self, mod, strategy):
        self._mod, self._strategy = mod, strategy

    def __getattr__(self, name):
        return getattr(self._mod, name)

    def remote(self, fn):
        rf = self._mod.remote(fn)
        pinned = rf.options(scheduling_strategy=self._strategy)
        pinned.options = rf.options
        return pinned


def run_ray(mb: int, repeat: int) -> dict:
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = measure(ray, mb * 2**20 // 8, repeat)
    ray.shutdown()
    return out


RUNNERS = {"p2pcompute": run_p2pcompute, "ray": run_ray}


def _run_child(name: str, mb: int, repeat: int) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--mb", str(mb), "--repeat", str(repeat)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: dict, mb: int) -> str:
    names = list(results)
    lines = [f"| {mb} MB, best of rounds (ms) | " + " | ".join(names) + " |" +
             (" p2pcompute vs ray |" if "ray" in names and "p2pcompute" in names else ""),
             "|---" * (len(names) + 1 + ("ray" in names and "p2pcompute" in names)) + "|"]
    for key, label in WORKLOADS:
        cells = [f"{results[n][key]:.2f}" if results[n] and key in results[n] else "-" for n in names]
        row = f"| {label} | " + " | ".join(cells) + " |"
        if "ray" in names and "p2pcompute" in names and results["ray"] and results["p2pcompute"]:
            row += f" {results['ray'][key] / max(results['p2pcompute'][key], 1e-9):.2f}x |"
        lines.append(row)
    p = results.get("p2pcompute")
    if p:
        lines.append("")
        lines.append(f"p2pcompute: task returning / (np.full + one copy) = "
                     f"{p['task_return'] / p['np_full_copy']:.2f}x; put / a.copy() = {p['put'] / p['copy']:.2f}x")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=list(RUNNERS))
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(RUNNERS[args.child](args.mb, args.repeat)))
        return 0
    results = {}
    for name in args.only:
        if name == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                continue
        results[name] = _run_child(name, args.mb, args.repeat)
    print(table(results, args.mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())

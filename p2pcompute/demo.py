"""`p2p demo`: the classic examples, end to end, with timings."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

import p2pcompute as p2p


def _say(text: str) -> None:
    print(text, flush=True)


# ---- 1. a small task graph: read two arrays from files and add them ----------------------------------------

@p2p.remote
def read_array(path: str) -> np.ndarray:
    return np.load(path)


@p2p.remote
def add_arrays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.add(a, b)


def task_graph() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(2):
            path = os.path.join(tmp, f"part{i}.npy")
            np.save(path, np.full((1000, 1000), i + 1, dtype=np.float64))
            paths.append(path)
        t0 = time.perf_counter()
        total = p2p.get(add_arrays.remote(read_array.remote(paths[0]), read_array.remote(paths[1])))
        dt = time.perf_counter() - t0
    _say(f"  read_array x2 -> add: every element is {total[0, 0]:.0f} (1 + 2), shape {total.shape}, "
         f"{dt * 1000:.0f} ms")


# ---- 2. an actor keeps state between calls ------------------------------------------------------------------

@p2p.remote
class Counter:
    def __init__(self):
        self.value = 0

    def increment(self) -> int:
        self.value += 1
        return self.value


def counter() -> None:
    c = Counter.remote()
    t0 = time.perf_counter()
    values = p2p.get([c.increment.remote() for _ in range(100)])
    dt = time.perf_counter() - t0
    _say(f"  Counter actor: 100 calls returned 1..{values[-1]} in order: {values == list(range(1, 101))}, "
         f"{dt * 1000:.0f} ms")


# ---- 3. a reduction as a chain and as a tree ------------------------------------------------------------------

@p2p.remote
def slow_add(a: float, b: float) -> float:
    time.sleep(0.5)
    return a + b


def reduction() -> None:
    values = list(range(8))
    t0 = time.perf_counter()
    acc = values[0]
    for v in values[1:]:
        acc = slow_add.remote(acc, v)
    chain = p2p.get(acc)
    chain_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    level = list(values)
    while len(level) > 1:
        level = [slow_add.remote(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    tree = p2p.get(level[0])
    tree_s = time.perf_counter() - t0
    _say(f"  sum of 8 values with 0.5 s adds: chain {chain} in {chain_s:.2f} s (7 in a row), "
         f"tree {tree} in {tree_s:.2f} s ({chain_s / tree_s:.1f}x faster)")


# ---- 4. a parameter server trains logistic regression ------------------------------------------------------

@p2p.remote
class ParameterServer:
    def __init__(self, dim: int, lr: float):
        self.w = np.zeros(dim)
        self.lr = lr

    def push(self, grad: np.ndarray) -> np.ndarray:
        self.w -= self.lr * grad
        return self.w

    def pull(self) -> np.ndarray:
        return self.w


def _make_data(n: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    true_w = np.linspace(-2, 2, dim)
    x = rng.normal(size=(n, dim))
    y = (x @ true_w + 0.3 * rng.normal(size=n) > 0).astype(np.float64)
    return x, y


@p2p.remote
def sgd_worker(ps, seed: int, steps: int, dim: int) -> int:
    x, y = _make_data(2000, dim, seed)
    rng = np.random.default_rng(seed + 100)
    w = p2p.get(ps.pull.remote())
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        p = 1 / (1 + np.exp(-x[idx] @ w))
        grad = x[idx].T @ (p - y[idx]) / len(idx)
        w = p2p.get(ps.push.remote(grad))
    return steps


def parameter_server() -> None:
    dim = 10
    ps = ParameterServer.remote(dim, 0.5)
    t0 = time.perf_counter()
    steps = sum(p2p.get([sgd_worker.remote(ps, seed, 100, dim) for seed in range(4)]))
    w = p2p.get(ps.pull.remote())
    dt = time.perf_counter() - t0
    x, y = _make_data(5000, dim, seed=999)
    accuracy = float(((x @ w > 0) == (y > 0.5)).mean())
    _say(f"  parameter server + 4 SGD workers: {steps} steps in {dt:.2f} s, test accuracy {accuracy:.1%}")


# ---- 5. a 100 MB array moves between tasks without copies --------------------------------------------------

@p2p.remote
def make_big(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


@p2p.remote
def big_sum(a: np.ndarray) -> tuple[float, bool]:
    return float(a.sum()), bool(a.flags.writeable)


def big_array() -> None:
    n = 100 * 1024 * 1024 // 8
    t0 = time.perf_counter()
    ref = make_big.remote(n)
    p2p.wait([ref])
    made_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    arr = p2p.get(ref)
    get_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    total, writable = p2p.get(big_sum.remote(ref))
    task_s = time.perf_counter() - t0
    _say(f"  100 MB array: made in a task in {made_s:.2f} s; get in {get_ms:.2f} ms (mapped, read-only: "
         f"{not arr.flags.writeable}); a task summed it in {task_s:.2f} s without a copy "
         f"(its view was read-only: {not writable}); sum correct: {total == n * (n - 1) / 2}")


def run(num_cpus: int | None = None) -> int:
    t0 = time.perf_counter()
    info = p2p.init(num_cpus=num_cpus)
    _say(f"p2pcompute demo: started an embedded peer {info['node_id']} with "
         f"{p2p.cluster_resources().get('CPU', 0):g} CPUs in {time.perf_counter() - t0:.2f} s")
    steps = [("task graph", task_graph), ("actor", counter), ("reduction", reduction),
             ("parameter server", parameter_server), ("zero-copy objects", big_array)]
    try:
        for title, step in steps:
            _say(f"{title}:")
            step()
    finally:
        p2p.shutdown()
    _say(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


# ---- the same on several local peers, one of them killed mid-run --------------------------------------------

@p2p.remote(max_retries=3)
def where_am_i(seconds: float) -> str:
    time.sleep(seconds)
    return p2p.get_runtime_context().node_id


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_peers(n: int, num_cpus: int | None, base: str) -> tuple[list[dict], str]:
    import argparse

    from p2pcompute import cli
    from p2pcompute.runtime.home import new_token
    token = new_token()
    peers = []
    for i in range(n):
        args = argparse.Namespace(home=os.path.join(base, f"peer{i}"), host="127.0.0.1", port=_free_port(),
                                  advertise_host=None, num_cpus=num_cpus if num_cpus is not None else 1,
                                  num_gpus=None, resources=None)
        seeds = [peers[-1]["tcp"]] if peers else []
        peers.append(cli._launch(args, seeds, token))
    return peers, token


def _wait_members(n: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for node in p2p.nodes() if node["Alive"]) >= n:
            return
        time.sleep(0.1)  # membership converges in the background; bounded by the deadline
    raise RuntimeError(f"the {n} peers did not all see each other within {timeout_s} s")


def run_cluster(n: int, num_cpus: int | None = None) -> int:
    import collections
    import shutil
    import signal
    base = tempfile.mkdtemp(prefix="p2p-demo-", dir="/tmp")
    peers: list[dict] = []
    try:
        t0 = time.perf_counter()
        peers, token = _start_peers(n, num_cpus, base)
        first = peers[0]["tcp"][len("tcp://"):]
        p2p.init(address=first, token=token)
        _wait_members(n)
        _say(f"p2pcompute demo: {n} peers on this machine ({', '.join(p['peer_id'] for p in peers)}), "
             f"{p2p.cluster_resources().get('CPU', 0):g} CPUs in all, ready in {time.perf_counter() - t0:.2f} s; "
             f"the driver is attached to {peers[0]['peer_id']}")
        t1 = time.perf_counter()
        spread = collections.Counter(p2p.get([where_am_i.remote(0.2) for _ in range(6 * n)]))
        _say(f"where {6 * n} tasks of 0.2 s ran: {dict(spread)} ({time.perf_counter() - t1:.2f} s)")
        for title, step in [("task graph", task_graph), ("actor", counter), ("reduction", reduction),
                            ("parameter server", parameter_server), ("zero-copy objects", big_array)]:
            _say(f"{title}:")
            step()
        victim = peers[-1]
        _say(f"fault: 60 tasks of 0.3 s; killing peer {victim['peer_id']} (kill -9) half a second in ...")
        t1 = time.perf_counter()
        refs = [where_am_i.remote(0.3) for _ in range(60)]
        time.sleep(0.5)
        os.kill(victim["pid"], signal.SIGKILL)
        done = collections.Counter(p2p.get(refs, timeout=120))
        _say(f"  all {sum(done.values())} tasks finished in {time.perf_counter() - t1:.2f} s despite the kill; "
             f"they ended on {dict(done)} (tasks running on the killed peer were retried elsewhere)")
    finally:
        p2p.shutdown()
        _stop_peers(peers)
        shutil.rmtree(base, ignore_errors=True)
    _say(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def _stop_peers(peers: list[dict]) -> None:
    import signal
    for peer in peers:
        try:
            os.kill(peer["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for peer in peers:
        while time.monotonic() < deadline:
            try:
                os.kill(peer["pid"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)  # waiting for a peer process to exit; bounded by the deadline

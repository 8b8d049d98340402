"""mlkit.train benchmarks: one-vs-rest logistic regression, ring allreduce, parameter-server updates.

    python benchmarks/train.py                       # 200k rows (modest: the machine is shared)
    python benchmarks/train.py --rows 1000000        # the issue's 1M-row set
    P2P_FORCE_TRANSFERS=1 python benchmarks/train.py # peers copy objects over TCP, as between machines

Phases, each in its own process (a driver attaches to one cluster):

- single:  the numpy one-vs-rest fit in this process (and scikit-learn's, for reference).
- local:   an embedded 2-CPU peer: the same fit on 2 workers; allreduce of 1/16/128 MB on 2 and 3 workers;
           the point-to-point transfer path's speed between two workers; parameter-server updates/s.
- peers:   3 local peers of 1 CPU each (started with the `p2p` CLI): the fit on 3 workers, one per peer;
           allreduce across the 3 peers.
- ray:     when Ray is installed: the same parameter-server loop on Ray actors.

Allreduce figures follow NCCL's convention: algorithm bandwidth = size / time; bus bandwidth = algorithm
bandwidth × 2(N-1)/N, the rate at which each worker's link carries ring traffic. An ideal ring's bus bandwidth
equals the point-to-point speed of one transfer, which is printed next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ALLREDUCE_MB = (1, 16, 128)


def make_data(rows: int, features: int = 40, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, size=(classes, features))
    y = rng.integers(0, classes, size=rows)
    X = centers[y] + rng.normal(0, 1.5, size=(rows, features))
    return X, y


def _model(iters: int):
    from p2pcompute.mlkit.train.models import LogisticRegression
    return LogisticRegression(max_iter=iters, tol=0.0)  # a fixed number of steps: equal work everywhere


# ---- phases ---------------------------------------------------------------------------------------------------


def phase_single(args) -> dict:
    X, y = make_data(args.rows)
    t0 = time.perf_counter()
    model = _model(args.iters).fit(X, y)
    out = {"ovr_single_s": time.perf_counter() - t0, "ovr_single_acc": model.score(X, y)}
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        t0 = time.perf_counter()
        sk = OneVsRestClassifier(LogisticRegression(max_iter=args.iters)).fit(X, y)
        out.update(ovr_sklearn_s=time.perf_counter() - t0, ovr_sklearn_acc=sk.score(X, y))
    except ImportError:
        pass
    return out


def _allreduce_loop(config):
    from p2pcompute.mlkit import train
    from p2pcompute.mlkit.train import session
    rank = train.get_context().get_world_rank()
    n = train.get_context().get_world_size()
    comm = session._session("bench").communicator
    out = {}
    for mb in config["sizes_mb"]:
        a = np.full(mb * 2**20 // 8, float(rank))
        repeat = config["repeat"] if mb < 100 else max(1, config["repeat"] - 1)
        train.allreduce(a)  # warm the path once
        times = []
        for _ in range(repeat):
            train.barrier()
            t0 = time.perf_counter()
            r = train.allreduce(a)
            times.append(time.perf_counter() - t0)
        assert r[0] == sum(range(n))
        out[f"allreduce_{mb}mb_s"] = min(times)
        if rank in (0, 1):  # ping-pong between ranks 0 and 1: the transfer path alone
            rtts = []
            for i in range(repeat + 1):
                t0 = time.perf_counter()
                if rank == 0:
                    comm._send(1, ("ping", mb, i), a, "bench")
                    comm._recv(("pong", mb, i))
                else:
                    got = comm._recv(("ping", mb, i))
                    comm._send(0, ("pong", mb, i), got, "bench")
                rtts.append(time.perf_counter() - t0)
            out[f"p2p_{mb}mb_s"] = min(rtts[1:]) / 2
        train.barrier()
    if rank == 0:
        train.report(out)
    else:
        train.report({})


def _allreduce(num_workers: int, args, strategy: str, storage: str, where: str) -> list[dict]:
    from p2pcompute.mlkit import train
    sizes = [mb for mb in ALLREDUCE_MB if mb <= args.max_allreduce_mb]
    res = train.DataParallelTrainer(
        _allreduce_loop, train_loop_config={"sizes_mb": sizes, "repeat": args.repeat},
        scaling_config=train.ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": 0},
                                           placement_strategy=strategy),
        run_config=train.RunConfig(storage_path=storage, name=f"allreduce{num_workers}", verbose=0)).fit()
    rows = []
    for mb in sizes:
        t = res.metrics[f"allreduce_{mb}mb_s"]
        size_gb = mb * 2**20 / 1e9
        rows.append({"workers": num_workers, "mb": mb, "where": where, "ms": t * 1e3, "algbw_GBps": size_gb / t,
                     "busbw_GBps": size_gb / t * 2 * (num_workers - 1) / num_workers,
                     "p2p_GBps": size_gb / res.metrics[f"p2p_{mb}mb_s"]})
    return rows


def _ovr_distributed(num_workers: int, args, strategy: str, storage: str) -> dict:
    X, y = make_data(args.rows)
    t0 = time.perf_counter()
    model = _model(args.iters).fit_distributed(X, y, num_workers=num_workers, storage_path=storage,
                                               resources_per_worker={"CPU": 1}, placement_strategy=strategy)
    return {f"ovr_{num_workers}w_s": time.perf_counter() - t0, f"ovr_{num_workers}w_acc": model.score(X, y)}


def _grad(w, shard):
    X, y = shard
    return X.T @ (X @ w - y) / len(y)


def _ps(mode: str, args) -> dict:
    from p2pcompute.mlkit import train
    rng = np.random.default_rng(0)
    # A few rows per shard: the figure is the server's rate, not the workers' gradient arithmetic.
    shards = [(rng.normal(size=(args.ps_rows, args.ps_dim)), rng.normal(size=args.ps_rows)) for _ in range(2)]
    ps = train.ParameterServer(np.zeros(args.ps_dim), mode=mode, num_workers=2, lr=1e-3)
    try:
        out = ps.train(_grad, shards, num_steps=args.ps_steps, num_cpus_per_worker=1)
    finally:
        ps.shutdown()
    stats = out["stats"]
    return {f"ps_{mode}_pushes_per_s": stats.pushes / out["wall_s"],
            f"ps_{mode}_updates_per_s": stats.updates / out["wall_s"],
            f"ps_{mode}_staleness_mean": stats.staleness_mean}


def phase_local(args) -> dict:
    import p2pcompute as p2p
    p2p.init(num_cpus=2)
    storage = tempfile.mkdtemp(prefix="p2p-train-bench-")
    out = {}
    out.update(_ovr_distributed(2, args, "PACK", storage))
    out["allreduce"] = [row for n in (2, 3) for row in _allreduce(n, args, "PACK", storage, "embedded peer")]
    for mode in ("sync", "async"):
        out.update(_ps(mode, args))
    p2p.shutdown()
    return out


def phase_peers(args) -> dict:
    from transfer import start_peers, stop_peers

    import p2pcompute as p2p
    base = tempfile.mkdtemp(prefix="p2p-train-peers-", dir="/tmp")
    peers = start_peers(3, base)
    try:
        p2p.init(address=f"127.0.0.1:{peers[0]['port']}", token=peers[0]["token"])
        deadline = time.monotonic() + 30
        while sum(n["Alive"] for n in p2p.nodes()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # waiting for gossip to show all three peers, bounded
        storage = os.path.join(base, "runs")
        out = {}
        out.update(_ovr_distributed(3, args, "SPREAD", storage))
        out["allreduce"] = _allreduce(3, args, "SPREAD", storage, "3 peers")
        p2p.shutdown()
        return out
    finally:
        stop_peers(peers)


def _ray_allreduce(ray, n: int, args) -> list[dict]:
    """The same ring (this library's Communicator) between Ray actors: Ray's object transfer path instead of
    p2pcompute's, everything else equal."""
    from p2pcompute.mlkit.train.collective import Communicator, Mailbox

    @ray.remote(max_concurrency=16)
    class RingWorker:
        def __init__(self):
            self.mailbox = Mailbox()

        def setup(self, rank, peers):
            self.comm = Communicator(rank, peers, self.mailbox, timeout_s=600)

        def deliver(self, tag, value):
            self.mailbox.put(tag, value)

        def bench(self, sizes_mb, repeat):
            out = {}
            for mb in sizes_mb:
                a = np.full(mb * 2**20 // 8, float(self.comm.rank))
                self.comm.allreduce(a)
                times = []
                for _ in range(repeat if mb < 100 else max(1, repeat - 1)):
                    self.comm.barrier()
                    t0 = time.perf_counter()
                    self.comm.allreduce(a)
                    times.append(time.perf_counter() - t0)
                out[mb] = min(times)
            return out

    workers = [RingWorker.options(num_cpus=0).remote() for _ in range(n)]
    ray.get([w.setup.remote(r, workers) for r, w in enumerate(workers)])
    sizes = [mb for mb in ALLREDUCE_MB if mb <= args.max_allreduce_mb]
    times = ray.get([w.bench.remote(sizes, args.repeat) for w in workers])[0]
    for w in workers:
        ray.kill(w)
    rows = []
    for mb in sizes:
        t = times[mb]
        size_gb = mb * 2**20 / 1e9
        rows.append({"workers": n, "mb": mb, "where": "Ray actors, same ring", "ms": t * 1e3,
                     "algbw_GBps": size_gb / t, "busbw_GBps": size_gb / t * 2 * (n - 1) / n, "p2p_GBps": float("nan")})
    return rows


def _ray_ovr(ray, args) -> dict:
    """What a Ray user writes without a collective library: actors compute shard gradients, the driver sums
    them and steps (same model code, same number of steps)."""
    X, y = make_data(args.rows)
    model = _model(args.iters)

    @ray.remote(num_cpus=1)
    class Shard:
        def __init__(self, X, y, model, classes):
            self.X, self.y, self.model = X, y, model
            self.model.classes_ = classes
            self.idx = model._encode(y)

        def grads(self, w):
            loss, g = self.model._loss_grad_sums(w, self.X, self.idx)
            return loss, g

    t0 = time.perf_counter()
    classes = np.unique(y)
    model.classes_ = classes
    w = model._init_weights(X.shape[1], np.random.default_rng(0))
    half = len(y) // 2
    shards = [Shard.remote(X[:half], y[:half], model, classes), Shard.remote(X[half:], y[half:], model, classes)]
    from p2pcompute.mlkit.train.models.base import Optimizer
    opt = Optimizer(model.optimizer, model.lr, model.momentum)
    for _ in range(args.iters):
        parts = ray.get([s.grads.remote(w) for s in shards])
        grads = {k: sum(p[1][k] for p in parts) / len(y) + (model.alpha * w[k] if k == "W" else 0) for k in w}
        opt.step(w, grads)
    wall = time.perf_counter() - t0
    model.weights_, model.n_features_in_ = w, X.shape[1]
    return {"ovr_ray2w_s": wall, "ovr_ray2w_acc": model.score(X, y)}


def phase_ray(args) -> dict:
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    out.update(_ray_ovr(ray, args))
    out["allreduce"] = [row for n in (2, 3) for row in _ray_allreduce(ray, n, args)]

    @ray.remote
    class PS:
        """The same server as p2pcompute's (one shard): async applies each push; sync answers a round's
        pushes together once all have arrived (an asyncio.Event, as ours)."""

        def __init__(self, dim, mode, n):
            self.w, self.mode, self.n, self.version = np.zeros(dim), mode, n, 0
            self.acc, self.count, self.pushes, self.done = np.zeros(dim), 0, 0, None

        async def push_pull(self, g):
            import asyncio
            self.pushes += 1
            if self.mode == "async":
                self.w -= 1e-3 * g
                self.version += 1
                return self.w.copy()
            if self.done is None:
                self.done = asyncio.Event()
            done = self.done
            self.acc += g
            self.count += 1
            if self.count == self.n:
                self.w -= 1e-3 * self.acc / self.n
                self.acc[:] = 0
                self.count = 0
                self.version += 1
                self.done = None
                done.set()
            else:
                await done.wait()
            return self.w.copy()

        async def pull(self):
            return self.w.copy()

        async def counts(self):
            return self.pushes, self.version

    @ray.remote
    def worker(ps, shard, steps):
        w = ray.get(ps.pull.remote())
        for _ in range(steps):
            w = ray.get(ps.push_pull.remote(_grad(w, shard)))
        return steps

    rng = np.random.default_rng(0)
    for mode in ("sync", "async"):
        ps = PS.remote(args.ps_dim, mode, 2)
        shards = [(rng.normal(size=(args.ps_rows, args.ps_dim)), rng.normal(size=args.ps_rows)) for _ in range(2)]
        t0 = time.perf_counter()
        ray.get([worker.remote(ps, s, args.ps_steps) for s in shards])
        wall = time.perf_counter() - t0
        pushes, updates = ray.get(ps.counts.remote())
        out[f"ray_ps_{mode}_pushes_per_s"] = pushes / wall
        out[f"ray_ps_{mode}_updates_per_s"] = updates / wall
    ray.shutdown()
    return out


PHASES = {"single": phase_single, "local": phase_local, "peers": phase_peers, "ray": phase_ray}


def _child(name: str, argv: list[str]) -> dict | None:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--child", name],
                          capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"phase {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
    return None


def report(r: dict, args) -> None:
    rows = args.rows
    print(f"\n== one-vs-rest logistic regression, {rows:,} rows x 40 features x 3 classes, {args.iters} full-batch "
          "steps ==")
    single = r.get("ovr_single_s")
    for key, label in (("ovr_single_s", "numpy, one process"),
                       ("ovr_sklearn_s", "scikit-learn OvR (lbfgs), one process"),
                       ("ovr_2w_s", "p2pcompute, 2 workers, embedded 2-CPU peer"),
                       ("ovr_3w_s", "p2pcompute, 3 workers on 3 local peers"),
                       ("ovr_ray2w_s", "Ray, 2 actors, driver sums gradients")):
        if key in r:
            ratio = f"  ({single / r[key]:.2f}x one process)" if single and key != "ovr_single_s" else ""
            acc = r.get(key[:-2] + "_acc")
            print(f"  {label:48s} {r[key]:7.2f} s   acc {acc:.4f}{ratio}")
    print("\n== allreduce (sum of float64), best of repeats ==")
    print(f"  {'workers':>7} {'MB':>5} {'ms':>9} {'algbw GB/s':>11} {'busbw GB/s':>11} {'p2p GB/s':>9}  where")
    for v in r.get("allreduce", []):
        p2p_speed = "" if v["p2p_GBps"] != v["p2p_GBps"] else f"{v['p2p_GBps']:.2f}"  # NaN: not measured
        print(f"  {v['workers']:>7} {v['mb']:>5} {v['ms']:9.1f} {v['algbw_GBps']:11.2f} {v['busbw_GBps']:11.2f} "
              f"{p2p_speed:>9}  {v['where']}")
    print(f"\n== parameter server, 2 workers, {args.ps_dim} float64 weights, {args.ps_steps} steps each ==")
    for mode in ("sync", "async"):
        if f"ps_{mode}_pushes_per_s" in r:
            ours = r[f"ps_{mode}_pushes_per_s"]
            line = (f"  {mode:5s} p2pcompute: {ours:7.0f} pushes/s, {r[f'ps_{mode}_updates_per_s']:7.0f} updates/s, "
                    f"mean staleness {r[f'ps_{mode}_staleness_mean']:.2f}")
            if f"ray_ps_{mode}_pushes_per_s" in r:
                ray_rate = r[f"ray_ps_{mode}_pushes_per_s"]
                line += f"   | Ray: {ray_rate:7.0f} pushes/s (p2pcompute/Ray = {ours / ray_rate:.2f})"
            print(line)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-allreduce-mb", type=int, default=128)
    parser.add_argument("--ps-dim", type=int, default=10_000)
    parser.add_argument("--ps-steps", type=int, default=300)
    parser.add_argument("--ps-rows", type=int, default=8)
    parser.add_argument("--only", nargs="*", choices=list(PHASES))
    parser.add_argument("--json", default=None, help="also write the raw figures to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(PHASES[args.child](args)))
        return 0
    argv = [a for a in sys.argv[1:] if a != "--json" and not a.endswith(".json")]
    results: dict = {}
    for name in args.only or list(PHASES):
        if name == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                continue
        print(f"running phase {name} ...", flush=True)
        out = _child(name, argv) or {}
        results.setdefault("allreduce", []).extend(out.pop("allreduce", []))
        results.update(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"\nmachine: {os.cpu_count()} CPUs, shared with other work (figures are noisy); "
          f"P2P_FORCE_TRANSFERS={os.environ.get('P2P_FORCE_TRANSFERS', '0')}")
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

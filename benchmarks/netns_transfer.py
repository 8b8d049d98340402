"""Object transfer and task round trips between two "machines": peers in network namespaces of their own.

Peers on one machine talk over Unix sockets and map each other's stores, so a benchmark between local peers
measures neither TCP nor CURVE. Here each peer runs in a namespace of its own (distinct machine ids, a veth
pair through a bridge, TCP with CURVE between them), as `tests/integration/netns_util.py` builds them, and a
driver in the first namespace (attached by address) pulls objects made on the second peer.

Ray's cross-node transfer is measured in the same run, the same way: a Ray head in a third namespace, a worker
node in a fourth, a task pinned to the worker node (a custom resource) makes the object, and the driver, next
to the head, times the first `ray.get` of it (after `ray.wait(..., fetch_local=False)`, so nothing was pulled
before the clock starts; a fresh object each time). Ray's object manager sends plain gRPC: no encryption.
With --ray-tls, a second Ray cluster runs with RAY_USE_TLS=1 (its gRPC channels over TLS, with a CA and a
certificate made for the run): an encrypted transfer against our encrypted one.
The systems take turns, round after round, so a machine busy with other work slows them alike.

    sudo python benchmarks/netns_transfer.py                 # needs root (network namespaces)
    sudo python benchmarks/netns_transfer.py --sizes-mb 10 100 --repeat 5 --delay-ms 1
    sudo python benchmarks/netns_transfer.py --no-ray --compare /tmp/old   # A/B against another checkout

With --delay-ms, `tc netem` adds that one-way delay on the link of the namespace holding the objects. Besides
times it reports the CPU the node daemons (our peers; Ray's raylets) used per run. For what ZeroMQ with CURVE
can move at all between the same namespaces, see `benchmarks/netns_zmq_ceiling.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))

from netns_util import PEER_PORT, Fabric, NsPeer, p2p_argv, probe  # noqa: E402

RAY_PORT = 6379
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
# Ray as it ships: no authentication and no encryption between nodes (and not a token someone left in ~/.ray).
RAY_ENV = ["env", "RAY_USAGE_STATS_ENABLED=0", "RAY_AUTH_MODE=disabled", "RAY_AUTH_TOKEN_PATH=/nonexistent"]

DRIVER = """
import json, sys, time
import numpy as np
import p2pcompute as p2p
from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

host, token, other, sizes, repeat = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
p2p.init(address=host, token=token)
there = NodeAffinitySchedulingStrategy(other, soft=False)

@p2p.remote
def make(n):
    return np.ones(n, dtype=np.uint8)

@p2p.remote
def noop():
    return None

out = {"pull": {}, "sync_task_us": None}
p2p.get(noop.options(scheduling_strategy=there).remote(), timeout=60)
t = time.perf_counter()
for _ in range(200):
    p2p.get(noop.options(scheduling_strategy=there).remote(), timeout=60)
out["sync_task_us"] = (time.perf_counter() - t) / 200 * 1e6
for mb in sizes:
    best = None
    for _ in range(repeat):
        ref = make.options(scheduling_strategy=there).remote(mb * 1024 * 1024)
        p2p.wait([ref], timeout=120)
        t = time.perf_counter()
        a = p2p.get(ref, timeout=120)
        dt = time.perf_counter() - t
        assert a.nbytes == mb * 1024 * 1024
        del a, ref
        best = dt if best is None else min(best, dt)
    out["pull"][mb] = best
print("RESULT " + json.dumps(out))
p2p.shutdown()
"""


RAY_DRIVER = """
import json, sys, time
import numpy as np
import ray

head, sizes, repeat = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
ray.init(address=head, logging_level="WARNING", log_to_driver=False)

@ray.remote(resources={"there": 0.01}, num_cpus=0)
def make(n):
    return np.ones(n, dtype=np.uint8)

@ray.remote(resources={"there": 0.01}, num_cpus=0)
def noop():
    return None

out = {"pull": {}, "sync_task_us": None}
ray.get(noop.remote())
t = time.perf_counter()
for _ in range(200):
    ray.get(noop.remote())
out["sync_task_us"] = (time.perf_counter() - t) / 200 * 1e6
for mb in sizes:
    best = None
    for _ in range(repeat):
        ref = make.remote(mb * 1024 * 1024)  # a fresh object each time: never one already pulled here
        ray.wait([ref], timeout=120, fetch_local=False)  # made on the other node, not yet pulled
        t = time.perf_counter()
        a = ray.get(ref, timeout=120)
        dt = time.perf_counter() - t
        assert a.nbytes == mb * 1024 * 1024
        del a, ref
        best = dt if best is None else min(best, dt)
    out["pull"][mb] = best
print("RESULT " + json.dumps(out))
ray.shutdown()
"""


class TreePeer(NsPeer):
    """A peer run from the checkout at `tree` (PYTHONPATH), so two versions can be compared in one run."""

    def __init__(self, fabric: Fabric, index: int, home: str, tree: str | None):
        super().__init__(fabric, index, home)
        self.tree = tree

    def p2p(self, *args: str, timeout_s: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        if self.tree is None:
            return super().p2p(*args, timeout_s=timeout_s, check=check)
        proc = self.fabric.run(self.index, ["env", f"PYTHONPATH={self.tree}", *p2p_argv(*args)], timeout_s)
        if check and proc.returncode != 0:
            raise AssertionError(f"p2p {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


def _result(proc: subprocess.CompletedProcess) -> dict:
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"the driver printed no result ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(line[len("RESULT "):])


def _tls_env(fabric: Fabric, base: str) -> list[str]:
    """Ray's TLS settings (RAY_USE_TLS: every gRPC channel, the object manager's too, over TLS) with a CA and
    one certificate, made here, valid for every host of the fabric."""
    d = os.path.join(base, "tls")
    os.makedirs(d)
    sans = ",".join(f"IP:{h}" for h in fabric.hosts) + ",IP:127.0.0.1,DNS:localhost"

    def ssl(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, cwd=d)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=bench-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=node")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write(f"subjectAltName={sans}\n")
    ssl("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "node.crt", "-days", "2", "-extfile", "ext.cnf")
    return ["RAY_USE_TLS=1", f"RAY_TLS_SERVER_CERT={d}/node.crt", f"RAY_TLS_SERVER_KEY={d}/node.key",
            f"RAY_TLS_CA_CERT={d}/ca.crt"]


def _start_ray(fabric: Fabric, base: str, head_ns: int, worker_ns: int, env: list[str]) -> str:
    """A Ray head in one namespace and a worker node with the resource "there" in another; its address."""
    head = f"{fabric.hosts[head_ns]}:{RAY_PORT}"
    common = ["--num-cpus", "1", "--object-store-memory", str(1 << 30), "--disable-usage-stats"]
    for ns, extra in ((head_ns, ["--head", "--port", str(RAY_PORT), "--include-dashboard=false"]),
                      (worker_ns, ["--address", head, "--resources", '{"there": 1}'])):
        proc = fabric.run(ns, [*env, RAY, "start", *extra, *common,
                               "--node-ip-address", fabric.hosts[ns], "--temp-dir", os.path.join(base, f"ray{ns}")],
                          timeout_s=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start in namespace {ns} failed:\n{proc.stdout}\n{proc.stderr}")
    return head


def _stop_ray(fabric: Fabric, namespaces: list[int]) -> None:
    # Not `ray stop`: it finds Ray's processes by name across the whole machine (a network namespace does
    # not hide processes), so it would also stop anyone else's Ray here. Ours are exactly those in our
    # namespaces: SIGTERM them, then Fabric.destroy() SIGKILLs whatever is left.
    for ns in namespaces:
        for pid in fabric.pids(fabric.namespaces[ns]):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


_DAEMONS = ("p2pcompute.runtime.daemon", "/raylet/raylet")  # the processes that move objects between nodes


def _daemon_cpu_s(fabric: Fabric, namespaces: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the node daemons in these namespaces: "all" their threads,
    and each of the threads that encrypt for ZeroMQ ("io <ns> <tid>": libzmq's I/O threads)."""
    out = {"all": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for ns in namespaces:
        for pid in fabric.pids(fabric.namespaces[ns]):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().decode(errors="replace")
                if not any(name in cmdline for name in _DAEMONS):
                    continue
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        comm, rest = f.read().split("(", 1)[1].rsplit(")", 1)
                except OSError:
                    continue
                fields = rest.split()
                cpu_s = (int(fields[11]) + int(fields[12])) / tick
                out["all"] += cpu_s
                if comm.startswith("ZMQbg/IO"):
                    out[f"io {ns} {tid}"] = cpu_s
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--repeat", type=int, default=3, help="pulls of each size per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each running every system once in turn")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--no-ray", action="store_true", help="skip Ray's cross-node transfer")
    ap.add_argument("--ray-tls", action="store_true", help="also run Ray with TLS between its nodes (RAY_USE_TLS)")
    ap.add_argument("--compare", metavar="TREE", action="append", default=[],
                    help="also run peers from this checkout (e.g. a git worktree of the previous commit), side by "
                         "side; may be repeated")
    args = ap.parse_args()
    reason = probe()
    if reason is not None:
        print(f"cannot build network namespaces here: {reason}", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="p2p-netns-bench-")
    systems = [("p2pcompute", None)] + [(f"p2pcompute at {tree}", os.path.abspath(tree)) for tree in args.compare]
    rays = [] if args.no_ray else [("Ray (no encryption)", False)] + ([("Ray with TLS", True)] if args.ray_tls else [])
    n_ns = 2 * len(systems) + 2 * len(rays)
    fabric = Fabric(f"p2pb{os.getpid()}", "A" * n_ns)
    peers: list[NsPeer] = []
    ray_ns: list[int] = []
    try:
        fabric.build()
        if args.delay_ms:
            for i in range(1, n_ns, 2):  # the second namespace of each pair: the one holding the objects
                subprocess.run(["ip", "netns", "exec", fabric.namespaces[i], "tc", "qdisc", "add", "dev", "eth0",
                                "root", "netem", "delay", f"{args.delay_ms}ms"], check=True)
        script = os.path.join(base, "driver.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(DRIVER))
        runs = []  # (name, argv in its first namespace)
        for k, (name, tree) in enumerate(systems):
            first, second = 2 * k, 2 * k + 1
            token_file = os.path.join(base, f"p{first}", "token")
            pair = []
            for i in (first, second):
                peer = TreePeer(fabric, i, os.path.join(base, f"p{i}"), tree)
                peers.append(peer)
                pair.append(peer)
                peer.launch(seed=pair[0] if i == second else None, token_file=token_file if i == second else None)
            token = open(token_file).read().strip()
            env = ["env", "P2P_FORCE_TRANSFERS=1"] + ([f"PYTHONPATH={tree}"] if tree else [])
            runs.append((name, first, [*env, sys.executable, script, f"{pair[0].host}:{PEER_PORT}", token,
                                       pair[1].peer_id, json.dumps(args.sizes_mb), str(args.repeat)]))
        ray_script = os.path.join(base, "ray_driver.py")
        with open(ray_script, "w") as f:
            f.write(textwrap.dedent(RAY_DRIVER))
        for k, (name, tls) in enumerate(rays):
            pair = [2 * len(systems) + 2 * k, 2 * len(systems) + 2 * k + 1]
            ray_ns += pair
            env = RAY_ENV + (_tls_env(fabric, base) if tls else [])
            head = _start_ray(fabric, base, *pair, env)
            runs.append((name, pair[0], [*env, sys.executable, ray_script, head, json.dumps(args.sizes_mb),
                                         str(args.repeat)]))
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for name, ns, argv in runs:
                before = _daemon_cpu_s(fabric, [ns, ns + 1])
                out = _result(fabric.run(ns, argv, timeout_s=600))
                after = _daemon_cpu_s(fabric, [ns, ns + 1])
                mine = best.setdefault(name, {"pull": {}, "sync_task_us": out["sync_task_us"], "cpu_s": [],
                                              "io_s": []})
                mine["cpu_s"].append(after["all"] - before["all"])
                io = [[after[k] - before.get(k, 0.0) for k in after if k.startswith(f"io {side} ")]
                      for side in (ns + 1, ns)]  # the holder's I/O threads, the reader's
                mine["io_s"].append(tuple((sum(threads), max(threads, default=0.0)) for threads in io))
                mine["sync_task_us"] = min(mine["sync_task_us"], out["sync_task_us"])
                for mb, secs in out["pull"].items():
                    mine["pull"][mb] = min(mine["pull"].get(mb, secs), secs)
        delay = f", {args.delay_ms} ms one-way delay" if args.delay_ms else ""
        print(f"two namespaces each{delay}; best of {args.rounds} rounds x {args.repeat} pulls")
        for name, out in best.items():
            print(f"{name}{' (TCP with CURVE)' if name.startswith('p2p') else ''}:")
            print(f"  sync task round trip to the other node: {out['sync_task_us']:.0f} us")
            pulled_mb = args.repeat * sum(args.sizes_mb)
            print(f"  CPU of both node daemons per run ({pulled_mb} MB pulled, 201 tasks): "
                  f"{min(out['cpu_s']):.2f} s at least, {sorted(out['cpu_s'])[len(out['cpu_s']) // 2]:.2f} s median")
            if name.startswith("p2p"):
                (holder_s, holder_max_s), (reader_s, reader_max_s) = min(out["io_s"], key=lambda x: x[0][0] + x[1][0])
                per_100mb_ms = 100 * 1000 / pulled_mb
                print(f"  CPU of libzmq's I/O threads (they encrypt, CURVE) per 100 MB pulled: holder "
                      f"{holder_s * per_100mb_ms:.0f} ms (busiest thread {holder_max_s * per_100mb_ms:.0f}), reader "
                      f"{reader_s * per_100mb_ms:.0f} ms (busiest {reader_max_s * per_100mb_ms:.0f})")
            for mb, secs in out["pull"].items():
                print(f"  pull of {mb} MB: {secs * 1000:.1f} ms = {int(mb) / 1024 / secs:.2f} GiB/s "
                      f"= {int(mb) * 1.048576 / 1000 / secs:.2f} GB/s")
        for ray_name, _tls in rays:
            ray = best[ray_name]["pull"]
            for name, out in best.items():
                if name.startswith("p2p"):
                    ratios = ", ".join(f"{mb} MB {ray[mb] / secs:.2f}x" for mb, secs in out["pull"].items())
                    print(f"{name} vs {ray_name} (speed ratio, >1 = faster than Ray): {ratios}")
        return 0
    finally:
        _stop_ray(fabric, ray_ns)
        for peer in peers:
            peer.stop()
        fabric.destroy()
        for peer in peers:
            if peer.peer_id:
                shutil.rmtree(f"/dev/shm/p2p-{peer.peer_id}", ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

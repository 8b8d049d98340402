"""Object transfer and task round trips between two "machines": peers in network namespaces of their own.

Peers on one machine talk over Unix sockets and map each other's stores, so a benchmark between local peers
measures neither TCP nor CURVE. Here each peer runs in a namespace of its own (distinct machine ids, a veth
pair through a bridge, TCP with CURVE between them), as `tests/integration/netns_util.py` builds them, and a
driver in the first namespace (attached by address) pulls objects made on the second peer.

    sudo python benchmarks/netns_transfer.py                 # needs root (network namespaces)
    sudo python benchmarks/netns_transfer.py --sizes-mb 10 100 --repeat 5 --delay-ms 1

With --delay-ms, `tc netem` adds that one-way delay on the second peer's link (a LAN-like round trip).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))

from netns_util import PEER_PORT, Fabric, NsPeer, probe  # noqa: E402

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    reason = probe()
    if reason is not None:
        print(f"cannot build network namespaces here: {reason}", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="p2p-netns-bench-")
    fabric = Fabric(f"p2pb{os.getpid()}", "AA")
    peers: list[NsPeer] = []
    try:
        fabric.build()
        token_file = os.path.join(base, "p0", "token")
        for i in range(2):
            peer = NsPeer(fabric, i, os.path.join(base, f"p{i}"))
            peers.append(peer)
            peer.launch(seed=peers[0] if i else None, token_file=token_file if i else None)
        if args.delay_ms:
            subprocess.run(["ip", "netns", "exec", fabric.namespaces[1], "tc", "qdisc", "add", "dev", "eth0", "root",
                            "netem", "delay", f"{args.delay_ms}ms"], check=True)
        script = os.path.join(base, "driver.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(DRIVER))
        token = open(token_file).read().strip()
        env = ["env", "P2P_FORCE_TRANSFERS=1"]
        proc = fabric.run(0, [*env, sys.executable, script, f"{peers[0].host}:{PEER_PORT}", token, peers[1].peer_id,
                              json.dumps(args.sizes_mb), str(args.repeat)], timeout_s=600)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        out = json.loads(line[len("RESULT "):])
        print(f"two namespaces, TCP with CURVE{f', {args.delay_ms} ms one-way delay' if args.delay_ms else ''}")
        print(f"  sync task round trip to the other peer: {out['sync_task_us']:.0f} us")
        for mb, secs in out["pull"].items():
            print(f"  pull of {mb} MB: {secs * 1000:.1f} ms = {int(mb) / 1024 / secs:.2f} GiB/s")
        return 0
    finally:
        for peer in peers:
            peer.stop()
        fabric.destroy()
        for peer in peers:
            if peer.peer_id:
                shutil.rmtree(f"/dev/shm/p2p-{peer.peer_id}", ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Object transfer between peers on loopback: one 100 MB array to another peer, and 1 GB to three at once.

    P2P_FORCE_TRANSFERS=1 python benchmarks/transfer.py            # the network path, as between machines
    python benchmarks/transfer.py                                  # same machine: peers map each other's store

Peers on one machine would normally map each other's shared-memory stores (no copy at all); with
P2P_FORCE_TRANSFERS=1 every read of another peer's object pulls a copy over TCP (CURVE-encrypted), which
is what happens between machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_peers(n: int, base: str) -> list[dict]:
    peers = []
    token_file = None
    for i in range(n):
        home = os.path.join(base, f"p{i}")
        port = _free_port()
        args = ["--home", home, "--host", "127.0.0.1", "--port", str(port), "--num-cpus", "1"]
        if i == 0:
            subprocess.run([sys.executable, "-m", "p2pcompute", "start", *args], check=True, capture_output=True)
            token_file = os.path.join(home, "token")
        else:
            subprocess.run([sys.executable, "-m", "p2pcompute", "join", f"127.0.0.1:{peers[0]['port']}", *args,
                            "--token-file", token_file], check=True, capture_output=True)
        state = json.load(open(os.path.join(home, "peer.json")))
        peers.append({"home": home, "port": port, "id": state["peer_id"], "pid": state["pid"],
                      "token": open(token_file).read().strip()})
    return peers


def stop_peers(peers: list[dict]) -> None:
    for p in peers:
        subprocess.run([sys.executable, "-m", "p2pcompute", "stop", "--home", p["home"]], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--fanout-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import numpy as np

    import p2pcompute as p2p
    from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On

    base = tempfile.mkdtemp(prefix="p2p-xfer-", dir="/tmp")
    peers = start_peers(4, base)
    try:
        p2p.init(address=f"127.0.0.1:{peers[0]['port']}", token=peers[0]["token"])
        deadline = time.monotonic() + 30
        while sum(n["Alive"] for n in p2p.nodes()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)

        @p2p.remote
        def touch(a) -> float:
            return float(a[-1])

        @p2p.remote
        def timed_read(holder) -> float:
            t0 = time.perf_counter()
            a = p2p.get(holder[0])
            assert a.nbytes > 0
            return time.perf_counter() - t0

        mode = "network (P2P_FORCE_TRANSFERS=1)" if os.environ.get("P2P_FORCE_TRANSFERS") == "1" else \
            "same machine (stores mapped directly)"
        print(f"mode: {mode}")
        best = float("inf")
        for _ in range(args.repeat):
            arr = np.random.default_rng(0).random(args.mb * 2**20 // 8)
            ref = p2p.put(arr)  # owned by the driver, stored on peer 0
            seconds = p2p.get(timed_read.options(scheduling_strategy=On(peers[1]["id"])).remote([ref]))
            best = min(best, seconds)
            del ref
        print(f"{args.mb} MB from peer 0 to peer 1: {best * 1000:.0f} ms, {args.mb / 1024 / best:.2f} GiB/s "
              f"(best of {args.repeat})")

        arr = np.ones(args.fanout_mb * 2**20 // 8)
        ref = p2p.put(arr)
        del arr
        t0 = time.perf_counter()
        times = p2p.get([timed_read.options(scheduling_strategy=On(p["id"])).remote([ref]) for p in peers[1:]])
        wall = time.perf_counter() - t0
        print(f"{args.fanout_mb} MB from peer 0 to 3 peers at once: {wall:.2f} s wall "
              f"({3 * args.fanout_mb / 1024 / wall:.2f} GiB/s delivered in all; per reader "
              f"{', '.join(f'{t:.2f} s' for t in times)})")
        del ref
        p2p.shutdown()
    finally:
        stop_peers(peers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

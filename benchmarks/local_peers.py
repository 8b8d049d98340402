"""Peers on this machine for the benchmarks: `p2p start` the first, `p2p join` the others, stop them after.

    homes, address, token = start_peers(3, cpus=2)
    ...
    stop_peers(homes)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_peers(n: int, cpus: int = 1, prefix: str = "p2p-bench-") -> tuple[list[str], str, str]:
    """n peers of `cpus` slots each on 127.0.0.1; returns (their homes, the first one's address, the token)."""
    base = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: peer homes hold Unix sockets
    homes, token_file, first_port = [], None, None
    try:
        for i in range(n):
            home, port = os.path.join(base, f"p{i}"), free_port()
            args = ["--home", home, "--host", "127.0.0.1", "--port", str(port), "--num-cpus", str(cpus)]
            homes.append(home)
            if i == 0:
                subprocess.run([sys.executable, "-m", "p2pcompute", "start", *args], check=True,
                               capture_output=True)
                token_file, first_port = os.path.join(home, "token"), port
            else:
                subprocess.run([sys.executable, "-m", "p2pcompute", "join", f"127.0.0.1:{first_port}", *args,
                                "--token-file", token_file], check=True, capture_output=True)
    except BaseException:
        stop_peers(homes)  # whatever did start
        raise
    with open(token_file) as f:
        return homes, f"127.0.0.1:{first_port}", f.read().strip()


def stop_peers(homes: list[str]) -> None:
    for home in homes:
        subprocess.run([sys.executable, "-m", "p2pcompute", "stop", "--home", home], capture_output=True)

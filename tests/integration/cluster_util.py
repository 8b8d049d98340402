"""Helpers to run real peers through the `p2p` command line, each with its own home and port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p2p(*args: str, timeout_s: float = 60, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "p2pcompute", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"p2p {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class Peer:
    def __init__(self, home: str, port: int):
        self.home = home
        self.port = port

    @property
    def state(self) -> dict:
        with open(os.path.join(self.home, "peer.json")) as f:
            return json.load(f)

    @property
    def pid(self) -> int:
        return self.state["pid"]

    @property
    def peer_id(self) -> str:
        return self.state["peer_id"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def status(self) -> dict:
        return json.loads(p2p("status", "--home", self.home, "--json").stdout)

    def states(self) -> dict[str, str]:
        """peer id -> state, as this peer sees the cluster."""
        return {n["NodeID"]: n["State"] for n in self.status()["nodes"]}

    def alive(self) -> bool:
        """Running (a killed peer can linger as a zombie until its new parent reaps it: that is dead)."""
        try:
            pid = self.pid
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, KeyError, ValueError, IndexError):
            return False


class Cluster:
    """Peers started with `p2p start` / `p2p join` in a temporary directory; all stopped at the end."""

    def __init__(self, base: str):
        self.base = base
        self.peers: list[Peer] = []
        self.pids: list[int] = []
        self.token_file = None

    def start(self, num_cpus: int = 1, resources: str | None = None) -> Peer:
        peer = Peer(os.path.join(self.base, f"p{len(self.peers)}"), free_port())
        args = ["--home", peer.home, "--host", "127.0.0.1", "--port", str(peer.port), "--num-cpus", str(num_cpus)]
        if resources:
            args += ["--resources", resources]
        if not self.peers:
            p2p("start", *args)
            self.token_file = os.path.join(peer.home, "token")
        else:
            p2p("join", self.peers[0].address, *args, "--token-file", self.token_file)
        self.peers.append(peer)
        self.pids.append(peer.pid)
        return peer

    def restart(self, peer: Peer, via: Peer) -> None:
        p2p("join", via.address, "--home", peer.home, "--host", "127.0.0.1", "--port", str(peer.port),
            "--num-cpus", "1", "--token-file", self.token_file)
        self.pids.append(peer.pid)

    def stop_all(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)  # waiting for a peer process to exit, bounded by the deadline
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def wait_for(pred, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval_s)  # polling another process's state, bounded by the deadline
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")

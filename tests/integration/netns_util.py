"""Peers in Linux network namespaces, on two switches joined by one uplink that a test can cut and heal.

Topology, all of it inside namespaces this module creates (the host's own interfaces and routes are never
touched, and no namespace has a route out of 10.77.0.0/24):

    ns <prefix>-p<i>: lo, eth0 = 10.77.0.<i+1>/24 ──veth── ns <prefix>-sw: port v<i> of bridge br<side>
    ns <prefix>-sw:   brA ── upA ═══ upB ── brB    (the uplink: `cut()` sets upA down, `heal()` up)

A cut therefore splits the peers into the two sides of a real partition: each side still reaches its own
members through its switch, and nothing crosses. Every peer runs in its own namespace, so its machine id
(which includes the namespace's inode) differs from every other peer's and peers cannot shortcut through
the Unix sockets of the shared filesystem: they talk over TCP on 10.77.0.0/24, as on separate machines.

`probe()` says why namespaces cannot be used here (not root, no CAP_NET_ADMIN, no `ip`, no veth), so the
test can skip instead of failing. `Fabric.destroy()` kills every process left in its namespaces and
deletes them, which also deletes their veths and bridges.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

SUBNET_PREFIX = "10.77.0."  # private, and only ever configured inside our own namespaces
PREFIX_LEN = 24
PEER_PORT = 7700  # every peer has a namespace of its own, so they can all use the default port


def _ip(*args: str, check: bool = True, timeout_s: float = 10) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def probe() -> str | None:
    """Why this process cannot build the fabric (None: it can). Tries exactly what `Fabric` needs."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"p2pprobe{os.getpid()}"
    try:
        made = _ip("netns", "add", name, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace (needs root or CAP_SYS_ADMIN + CAP_NET_ADMIN): " \
                   f"{made.stderr.strip()}"
        veth = _ip("-n", name, "link", "add", "t0", "type", "veth", "peer", "name", "t1", check=False)
        if veth.returncode != 0:
            return f"cannot create a veth pair inside a namespace: {veth.stderr.strip()}"
        bridge = _ip("-n", name, "link", "add", "b0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a bridge inside a namespace: {bridge.stderr.strip()}"
        inside = subprocess.run(["ip", "netns", "exec", name, "true"], capture_output=True, text=True, timeout=10)
        if inside.returncode != 0:
            return f"cannot run a process inside a network namespace: {inside.stderr.strip()}"
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run `ip`: {exc}"
    finally:
        _ip("netns", "del", name, check=False)


class Fabric:
    """Namespaces for `sides` peers (e.g. "AABB": peers 0, 1 on switch A; 2, 3 on switch B)."""

    def __init__(self, prefix: str, sides: str):
        assert set(sides) <= {"A", "B"} and len(sides) < 250
        self.prefix = prefix
        self.sides = sides
        self.switch = f"{prefix}-sw"
        self.namespaces = [f"{prefix}-p{i}" for i in range(len(sides))]
        self.hosts = [f"{SUBNET_PREFIX}{i + 1}" for i in range(len(sides))]
        self._made: list[str] = []  # namespaces created so far, for destroy() after a partial build

    def build(self) -> None:
        self._add_ns(self.switch)
        sw = ("-n", self.switch)
        for side in "AB":
            # No STP, no forwarding delay: a port forwards as soon as it is up, so a heal is immediate.
            _ip(*sw, "link", "add", f"br{side}", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip(*sw, "link", "add", "upA", "type", "veth", "peer", "name", "upB")
        for side in "AB":
            _ip(*sw, "link", "set", f"up{side}", "master", f"br{side}")
            _ip(*sw, "link", "set", f"up{side}", "up")
            _ip(*sw, "link", "set", f"br{side}", "up")
        for i, (ns, host, side) in enumerate(zip(self.namespaces, self.hosts, self.sides)):
            self._add_ns(ns)
            _ip(*sw, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip(*sw, "link", "set", f"v{i}", "master", f"br{side}")
            _ip(*sw, "link", "set", f"v{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{host}/{PREFIX_LEN}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)

    def cut(self) -> None:
        """Partition: the uplink between the switches goes down (both of its ends lose carrier)."""
        _ip("-n", self.switch, "link", "set", "upA", "down")

    def heal(self) -> None:
        _ip("-n", self.switch, "link", "set", "upA", "up")

    def run(self, i: int, argv: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess:
        """Run `argv` inside peer i's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.namespaces[i], *argv], capture_output=True,
                              text=True, timeout=timeout_s)

    def start(self, i: int, argv: list[str]) -> subprocess.Popen:
        """Start `argv` inside peer i's namespace without waiting for it."""
        return subprocess.Popen(["ip", "netns", "exec", self.namespaces[i], *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def pids(self, ns: str) -> list[int]:
        out = _ip("netns", "pids", ns, check=False)
        return [int(p) for p in out.stdout.split() if p.isdigit()]

    def destroy(self) -> None:
        """SIGKILL whatever still runs in our namespaces, then delete them (and with them every veth)."""
        for ns in self._made:
            for pid in self.pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for ns in self._made:
            while self.pids(ns) and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting for killed processes to exit, bounded by the deadline
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()


def p2p_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "p2pcompute", *args]


class NsPeer:
    """One peer started through the `p2p` command line inside namespace `fabric.namespaces[index]`."""

    def __init__(self, fabric: Fabric, index: int, home: str):
        self.fabric = fabric
        self.index = index
        self.home = home
        self.host = fabric.hosts[index]
        self.side = fabric.sides[index]
        self.address = f"{self.host}:{PEER_PORT}"
        self.peer_id = ""

    def p2p(self, *args: str, timeout_s: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        proc = self.fabric.run(self.index, p2p_argv(*args), timeout_s)
        if check and proc.returncode != 0:
            raise AssertionError(f"[{self.fabric.namespaces[self.index]}] p2p {' '.join(args)} failed "
                                 f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def launch(self, seed: "NsPeer | None", token_file: str | None) -> None:
        args = ["--home", self.home, "--host", self.host, "--port", str(PEER_PORT), "--num-cpus", "1"]
        if seed is None:
            self.p2p("start", *args)
        else:
            self.p2p("join", seed.address, *args, "--token-file", token_file)
        with open(os.path.join(self.home, "peer.json")) as f:
            self.peer_id = json.load(f)["peer_id"]

    def stop(self) -> None:
        try:
            self.p2p("stop", "--home", self.home, timeout_s=15, check=False)
        except subprocess.TimeoutExpired:
            pass  # destroy() kills what is left

    @property
    def log_path(self) -> str:
        return os.path.join(self.home, "logs", "peer.log")

    def transitions(self, since_s: float = 0.0) -> list[tuple[float, str, str, str]]:
        """(wall time, peer id, old state, new state) for each membership change this peer logged at or after
        wall time `since_s`; precise to the millisecond, unlike polling `p2p status`."""
        out = []
        with open(self.log_path, errors="replace") as f:
            for line in f:
                m = _CHANGE.match(line)
                if m is None:
                    continue
                t = datetime.datetime.strptime(m["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if t >= since_s:
                    out.append((t, m["peer"], m["old"], m["new"]))
        return out


# The peer's log line for a `MemberChanged` (runtime/peer.py, `_on_member_changed`), after the log format of
# runtime/daemon.py: "<asctime> peer <self id> INFO p2pcompute.peer: peer <id> at <address>: <old> -> <new>".
_CHANGE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) peer \S+ INFO p2pcompute\.peer: "
                     r"peer (?P<peer>\S+) at .*: (?P<old>\w+) -> (?P<new>\w+)$")


def statuses(peers: list[NsPeer], timeout_s: float = 15) -> dict[str, dict]:
    """`p2p status --json` of every peer, run inside each one's namespace, all at once: peer id -> status.

    A peer whose status fails is left out (the caller's condition then simply is not met yet).
    """
    procs = [(p, p.fabric.start(p.index, p2p_argv("status", "--home", p.home, "--json"))) for p in peers]
    out = {}
    for peer, proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            continue
        if proc.returncode == 0:
            out[peer.peer_id] = json.loads(stdout)
    return out


def views(peers: list[NsPeer]) -> dict[str, dict[str, str]]:
    """observer peer id -> {peer id -> state}, for every peer that answered."""
    return {pid: {n["NodeID"]: n["State"] for n in status["nodes"]} for pid, status in statuses(peers).items()}

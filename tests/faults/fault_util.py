"""Helpers for the fault tests: a four-peer cluster that can be killed and paused, and driver processes whose
JSON-line reports are read with deadlines.

A "machine" here is a peer's process group: `p2p start`/`join` runs the peer in a session of its own, and its
zygote and workers stay in that group, so signalling the group pauses or kills the whole machine. A killed
peer's shared-memory store would outlive it on this host (tmpfs belongs to the kernel, not to the process);
`lose_memory` deletes it, as a real machine's loss would, so that other processes cannot read its objects.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from cluster_util import Cluster, Peer, wait_for as wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "fault_driver.py")


class DriverError(AssertionError):
    """The driver process reported an error (a `get` raised) or exited while the test waited for an event."""


class EventTimeout(AssertionError):
    """The driver reported no awaited event before the deadline."""


class WorkFailed(AssertionError):
    """Work submitted around a fault failed (a `get` raised) where the system should have recovered."""


class RecoveryTooSlow(AssertionError):
    """The work finished, correctly, but recovering from the fault took longer than its stated bound."""


def signal_group(peer_pid: int, sig: int) -> None:
    """Send `sig` to the peer's whole process group (peer, zygote, workers): one machine."""
    try:
        os.killpg(os.getpgid(peer_pid), sig)
    except ProcessLookupError:
        pass


class FaultCluster(Cluster):
    """`Cluster` plus what faults need: per-peer store directories, and a teardown that also resumes paused
    peers and removes the stores of killed ones (a SIGKILLed peer cannot clean up after itself)."""

    def __init__(self, base: str):
        super().__init__(base)
        self.stopped_groups: set[int] = set()
        self.store_dirs: list[str] = []
        self.peer_ids: list[str] = []

    def start(self, num_cpus: int = 1, resources: str | None = None) -> Peer:
        peer = super().start(num_cpus, resources)
        self.store_dirs.append(peer.state["store_dir"])
        self.peer_ids.append(peer.peer_id)
        return peer

    def self_status(self, peer: Peer) -> dict:
        """This peer's own row of `p2p status --json` (its own view of itself is the freshest)."""
        status = peer.status()
        return next(n for n in status["nodes"] if n["NodeID"] == status["peer_id"])

    def alive_seen_by(self, peer: Peer) -> set[str]:
        return {i for i, s in peer.states().items() if s == "alive"}

    def kill(self, peer: Peer, lose_memory: bool = True) -> int:
        """SIGKILL the peer's machine; with `lose_memory`, delete its store as a dead machine's RAM would be.
        Returns how many objects the store held at the kill."""
        store = peer.state["store_dir"]
        signal_group(peer.pid, signal.SIGKILL)
        held = 0
        if lose_memory:
            held = stored_objects(store)
            shutil.rmtree(store, ignore_errors=True)
        return held

    def pause(self, peer: Peer) -> None:
        pgid = os.getpgid(peer.pid)
        self.stopped_groups.add(pgid)
        os.killpg(pgid, signal.SIGSTOP)

    def resume(self, peer: Peer) -> None:
        pgid = os.getpgid(peer.pid)
        os.killpg(pgid, signal.SIGCONT)
        self.stopped_groups.discard(pgid)

    def stop_all(self) -> None:
        for pgid in list(self.stopped_groups):
            try:
                os.killpg(pgid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            except ProcessLookupError:
                pass
        super().stop_all()
        for store in self.store_dirs:
            shutil.rmtree(store, ignore_errors=True)  # only the killed peers' are still there


def stored_objects(store_dir: str) -> int:
    """Objects in a store directory: whole object files, not `.part` files being written nor `.spill`."""
    try:
        return len([n for n in os.listdir(store_dir) if not n.startswith(".") and not n.endswith(".part")])
    except FileNotFoundError:
        return 0


def start_four(base: str, num_cpus: int = 1) -> FaultCluster:
    cluster = FaultCluster(base)
    try:
        for _ in range(4):
            cluster.start(num_cpus=num_cpus)
        ids = set(cluster.peer_ids)
        for peer in cluster.peers:
            wait_until(lambda: cluster.alive_seen_by(peer) == ids, 30, f"{peer.peer_id} to see all four alive")
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


class Driver:
    """A `fault_driver.py` process; its stdout events are queued by a thread and read with deadlines."""

    def __init__(self, peer: Peer, token_file: str, mode: str, *args: str, log_path: str | None = None):
        self.events: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.stderr_path = log_path
        stderr = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, DRIVER, peer.address, token_file, mode, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                     cwd=HERE)
        if log_path:
            stderr.close()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "line": line.rstrip("\n")}
            self.events.put(event)
        self.events.put({"event": "exit"})

    def next_event(self, kinds: set[str], timeout_s: float) -> dict:
        """The next event of one of `kinds`; fails the test on a deadline, an error, or the driver's exit."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(0.0, left))
            except queue.Empty:
                raise EventTimeout(f"no {sorted(kinds)} event from the driver within {timeout_s:.1f} s; "
                                   f"last events: {self.seen[-3:]}\n{self.stderr_tail()}") from None
            self.seen.append(event)
            if event["event"] in kinds:
                return event
            if event["event"] in ("error", "exit"):
                raise DriverError(f"the driver ended while waiting for {sorted(kinds)}: {event}\n"
                                  f"{self.stderr_tail()}")

    def until(self, pred, timeout_s: float, kinds: set[str]) -> dict:
        """The first event of `kinds` for which `pred(event)` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            event = self.next_event(kinds, max(0.0, deadline - time.monotonic()))
            if pred(event):
                return event

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout_s: float = 60) -> int:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the driver did not exit within {timeout_s} s\n{self.stderr_tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr_tail(self, lines: int = 30) -> str:
        if not self.stderr_path or not os.path.exists(self.stderr_path):
            return ""
        with open(self.stderr_path, errors="replace") as f:
            return "driver stderr:\n" + "".join(f.readlines()[-lines:])


def keep_logs(base: str, dest) -> None:
    """Copy every peer's logs (peer.log, worker-*.log) from the homes under `base` to `dest`/logs-<home>."""
    for home in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        logs = os.path.join(base, home, "logs")
        if os.path.isdir(logs):
            shutil.copytree(logs, os.path.join(str(dest), f"logs-{home}"), dirs_exist_ok=True)


def transitions(cluster: FaultCluster) -> list[tuple[float, str, str, str]]:
    """(unix time, observer, peer, new state) for every membership change the peers logged, in log order."""
    out = []
    for peer, observer in zip(cluster.peers, cluster.peer_ids):
        try:
            with open(os.path.join(peer.home, "logs", "peer.log"), errors="replace") as f:
                for line in f:
                    # 2026-11-22 02:33:34,608 peer <self> INFO p2pcompute.peer: peer <id> at <addresses>: a -> b
                    if "p2pcompute.peer: peer " not in line or " -> " not in line:
                        continue
                    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    subject = line.split("p2pcompute.peer: peer ", 1)[1].split()[0]
                    out.append((stamp, observer, subject, line.rstrip().rsplit(" -> ", 1)[1]))
        except (FileNotFoundError, ValueError):
            pass
    return out


def declared_dead(cluster: FaultCluster) -> set[tuple[str, str]]:
    """(observer, peer) for every peer some peer declared dead, by what the peers logged."""
    return {(observer, subject) for _t, observer, subject, state in transitions(cluster) if state == "dead"}

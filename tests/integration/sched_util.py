"""Helpers for the scheduling tests: a cluster of CLI-started peers, and drivers attached to them.

A driver is a fresh interpreter running a short script that attaches to one peer by address
(`p2p.init(address="127.0.0.1:PORT", token=...)`) and prints one JSON line, prefixed with `RESULT `, with
what it observed; the test asserts on that. Drivers that must outlive a call (to be killed, watched while
they work, or told when to go on) are started with `start_driver`: they print lines the test waits for, and
read lines the test sends.

Every wait is a deadline on a condition (`cluster_util.wait_for`), never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from cluster_util import Cluster, Peer

RESULT = "RESULT "

_PRELUDE = """\
import collections, json, os, sys, time
import p2pcompute as p2p
from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy
p2p.init(address={address!r}, token=open({token_file!r}).read().strip())
NODE = p2p.get_runtime_context().node_id

def report(value):
    print({result!r} + json.dumps(value), flush=True)

"""


def script(cluster: Cluster, peer: Peer, body: str) -> str:
    """A driver script attached to `peer`: the prelude, then `body`."""
    prelude = _PRELUDE.format(address=peer.address, token_file=cluster.token_file, result=RESULT)
    return prelude + textwrap.dedent(body) + "\np2p.shutdown()\n"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("P2P_ADDRESS", "P2P_TOKEN", "P2P_HOME")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_driver(cluster: Cluster, peer: Peer, body: str, tmp_path, *, timeout_s: float = 60,
               name: str = "driver.py") -> tuple[object, subprocess.CompletedProcess]:
    """Run a driver to completion; returns (its reported value, the finished process)."""
    path = tmp_path / name
    path.write_text(script(cluster, peer, body))
    proc = subprocess.run([sys.executable, str(path)], cwd=str(tmp_path), env=_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        pytest.fail(f"driver exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                    f"--- stderr\n{proc.stderr[-4000:]}")
    return result_of(proc.stdout), proc


def result_of(stdout: str) -> object:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    assert lines, f"the driver reported nothing:\n{stdout[-4000:]}"
    return json.loads(lines[-1][len(RESULT):])


class Driver:
    """A driver running in the background. The test reads its stdout line by line (`read_line`) and may
    answer on its stdin (`send`); reads go straight to the pipe, so no line hides in a buffer."""

    def __init__(self, path, cwd):
        self.proc = subprocess.Popen([sys.executable, str(path)], cwd=str(cwd), env=_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self._buf = b""
        self.stdout_seen = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, prefix: str, timeout_s: float) -> str:
        """The rest of the first unread stdout line starting with `prefix`, within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                self.stdout_seen += text + "\n"
                if text.startswith(prefix):
                    return text[len(prefix):].strip()
            left = deadline - time.monotonic()
            chunk = b""
            if left > 0 and select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
            if not chunk:
                break  # timed out, or the driver closed its stdout (exited)
            self._buf += chunk
        pytest.fail(f"no line starting with {prefix!r} from the driver within {timeout_s} s "
                    f"(exit code {self.proc.poll()}):\n{self.stdout_seen[-2000:]}\n{self._stderr_if_done()}")

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        """Wait for the driver to exit; returns (exit code, all its stdout, its stderr)."""
        out, err = self.proc.communicate(timeout=timeout_s)
        return (self.proc.returncode, self.stdout_seen + (self._buf + out).decode(errors="replace"),
                err.decode(errors="replace"))

    def kill(self) -> None:
        """Stop the driver if it still runs (a test's cleanup) and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=10)
        except (ValueError, subprocess.TimeoutExpired):
            pass  # already communicated, or a process that will not die (reported by the test's own failure)

    def _stderr_if_done(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-4000:]


def start_driver(cluster: Cluster, peer: Peer, body: str, tmp_path, *, name: str = "driver.py") -> Driver:
    """Start a driver attached to `peer` in the background."""
    path = tmp_path / name
    path.write_text(script(cluster, peer, body))
    return Driver(path, tmp_path)


def rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def cpu_available(peer: Peer) -> float:
    """The peer's own count of free CPUs, from `p2p status --json` on that peer."""
    status = peer.status()
    me = next(n for n in status["nodes"] if n["NodeID"] == status["peer_id"])
    return me["Available"].get("CPU", 0.0)


def alive_ids(peer: Peer) -> set[str]:
    return {i for i, s in peer.states().items() if s == "alive"}

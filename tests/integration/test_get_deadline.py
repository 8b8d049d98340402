"""`get(ref, timeout=...)` keeps its deadline while the value is being pulled from another peer.

Two real peers with `P2P_FORCE_TRANSFERS=1` (no mapping of each other's store, as between machines): the
value of a task pinned to the second peer must be pulled. The second peer's daemon is stopped (SIGSTOP), so
the pull hangs; membership is slowed down (probes every 3 s) so it does not declare the peer dead during
the test. `get` must raise `GetTimeoutError` when its timeout passes, not wait out the pull's own limit
(60 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from cluster_util import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SLOW_MEMBERSHIP = {"P2P_MEMBERSHIP_PROBE_INTERVAL_MS": "3000", "P2P_MEMBERSHIP_PROBE_TIMEOUT_MS": "1000",
                   "P2P_FORCE_TRANSFERS": "1"}

DRIVER = """
import sys, time
import numpy as np
import p2pcompute as p2p
from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy
p2p.init(address="{address}", token=open("{token_file}").read().strip())
far = [n["NodeID"] for n in p2p.nodes() if "tcp://{far_address}" in str(n.get("Address")).split()][0]

@p2p.remote
def make():
    return np.ones(2_000_000)  # 16 MB: stored in the far peer's store, not sent inline

ref = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(far, soft=False)).remote()
ready, _ = p2p.wait([ref], timeout=60)
assert ready, "the task did not finish"
print("ready", flush=True)
sys.stdin.readline()  # the far peer is stopped now
t0 = time.monotonic()
try:
    p2p.get(ref, timeout=1.0)
    print("value", flush=True)
except Exception as exc:  # noqa: BLE001 - the type is what the test reads
    print(f"{{type(exc).__name__}} {{time.monotonic() - t0:.2f}}", flush=True)
"""


def test_get_keeps_its_deadline_while_a_pull_hangs(monkeypatch):
    for key, value in SLOW_MEMBERSHIP.items():
        monkeypatch.setenv(key, value)
    base = tempfile.mkdtemp(prefix="p2pd")
    cluster = Cluster(base)
    driver = None
    try:
        near, far = cluster.start(), cluster.start()
        wait_for(lambda: sum(s == "alive" for s in near.states().values()) == 2, 30, "two alive peers")
        script = DRIVER.format(address=near.address, token_file=cluster.token_file,
                               far_address=far.address.split("://")[-1])
        driver = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        line = driver.stdout.readline().strip()
        assert line == "ready", f"{line}\n{driver.stderr.read() if driver.poll() is not None else ''}"
        os.kill(far.pid, signal.SIGSTOP)
        driver.stdin.write("go\n")
        driver.stdin.flush()
        out, err = driver.communicate(timeout=60)
        kind, elapsed = out.split()[-2:]
        assert kind == "GetTimeoutError", f"{out}\n{err}"
        assert float(elapsed) < 6.0, f"get(timeout=1) took {elapsed} s"
        assert near.states().get(far.peer_id) != "dead", "the pull ended because the peer was declared dead"
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for pid in cluster.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        cluster.stop_all()
        shutil.rmtree(base, ignore_errors=True)

"""Deaths are final, with real processes: a peer paused (SIGSTOP) past the suspicion timeout is declared dead
by the others; resumed (SIGCONT), it is fenced — it exits, saying why — instead of coming back under its old
id, while the rest of the cluster keeps working. Its driver's calls then fail at once with an error naming
the cause.

Membership timeouts are made short through the config surface (`P2P_MEMBERSHIP_*` environment variables,
inherited by `p2p start`/`p2p join`; see docs/operations.md), so the pause need only be a few seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from cluster_util import Cluster, wait_for
from p2pcompute.net.membership_config import MembershipConfig, detection_bound_ms

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(150)]

SLACK_S = 5.0  # scheduling noise on a loaded 2-core machine
FAST = {"P2P_MEMBERSHIP_PROBE_INTERVAL_MS": "250", "P2P_MEMBERSHIP_PROBE_TIMEOUT_MS": "100"}

GET_TIMEOUT_S = 15

DRIVER = """
import sys, time
GET_TIMEOUT_S = {get_timeout_s}
import p2pcompute as p2p
p2p.init(address="{address}", token=open("{token_file}").read().strip())

@p2p.remote
def one():
    return 1

print("ready", flush=True)
while True:  # calls until one fails: the peer behind this driver was fenced
    try:
        p2p.get(one.remote(), timeout=GET_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - what failed, and how, is what the test reads
        print(f"error {{type(exc).__name__}}: {{exc}}", flush=True)
        sys.exit(0)
    time.sleep(0.05)
"""


@pytest.fixture
def three(monkeypatch):
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    base = tempfile.mkdtemp(prefix="p2pf")  # short: peer homes hold Unix sockets
    cluster = Cluster(base)
    try:
        for _ in range(3):
            cluster.start()
        ids = {p.peer_id for p in cluster.peers}
        for peer in cluster.peers:
            wait_for(lambda: {i for i, s in peer.states().items() if s == "alive"} == ids, 30,
                     f"peer {peer.peer_id} to see all three alive")
        yield cluster
    finally:
        for pid in cluster.pids:
            try:
                os.kill(pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            except ProcessLookupError:
                pass
        cluster.stop_all()
        shutil.rmtree(base, ignore_errors=True)


def test_a_peer_paused_past_the_suspicion_timeout_is_fenced_and_the_rest_keeps_working(three):
    config = MembershipConfig(probe_interval_ms=250, probe_timeout_ms=100)
    bound_s = detection_bound_ms(config, 3) / 1000
    paused, others = three.peers[2], three.peers[:2]
    paused_id, paused_pid, log_path = paused.peer_id, paused.pid, os.path.join(paused.home, "logs", "peer.log")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(address=paused.address,
                                                                   token_file=three.token_file,
                                                                   get_timeout_s=GET_TIMEOUT_S)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "ready", driver.stderr.read()
        os.kill(paused_pid, signal.SIGSTOP)  # the peer process only: its driver keeps calling, and waits
        t_stop = time.monotonic()
        for peer in others:
            wait_for(lambda: peer.states().get(paused_id) == "dead", bound_s + SLACK_S,
                     f"{peer.peer_id} to declare the paused peer dead")
        os.kill(paused_pid, signal.SIGCONT)
        t_cont = time.monotonic()
        # Fenced: it exits rather than refuting its death, and says why.
        wait_for(lambda: not paused.alive(), 30, "the resumed peer to exit, fenced")
        t_gone = time.monotonic()
        with open(log_path, errors="replace") as f:
            text = f.read()
        assert "was declared dead by the cluster" in text and "p2p join" in text
        # Its driver is told (ProcessDied for its peer): the call in progress fails with an error.
        out, err = driver.communicate(timeout=GET_TIMEOUT_S + 30)
        errors = [line for line in out.splitlines() if line.startswith("error ")]
        assert errors, f"the driver of the fenced peer got no error:\n{out}\n{err}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    # The others never take it back, and keep working: a driver on one of them runs tasks on both.
    for peer in others:
        states = peer.states()
        assert states.get(paused_id) == "dead"
        assert {i for i, s in states.items() if s == "alive"} == {p.peer_id for p in others}
    code = f"""
import time
import p2pcompute as p2p
p2p.init(address="{others[0].address}", token=open("{three.token_file}").read().strip())
@p2p.remote
def where():
    time.sleep(0.3)
    return p2p.get_runtime_context().node_id
print(sorted(set(p2p.get([where.remote() for _ in range(8)], timeout=60))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert set(eval(done.stdout.strip().splitlines()[-1])) <= {p.peer_id for p in others}
    print(f"\n[fence] declared dead {t_cont - t_stop:.1f} s after the SIGSTOP (bound {bound_s:.1f} s); exited "
          f"{t_gone - t_cont:.2f} s after the SIGCONT; its driver saw: {errors[0][:200]}")
    assert "PeerUnavailableError" in errors[0] and "declared dead by the cluster" in errors[0], errors[0]

"""Real peers on loopback, driven through the command line: join, status, crash, restart, leave, tokens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from p2pcompute.net.membership_config import MembershipConfig, detection_bound_ms
from cluster_util import Cluster, p2p, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SLACK_S = 3.0  # scheduling noise on a loaded 2-core machine, on top of the protocol's own bound


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    cluster = Cluster(str(tmp_path_factory.mktemp("cluster")))
    try:
        for _ in range(4):
            cluster.start()
        ids = {p.peer_id for p in cluster.peers}
        for peer in cluster.peers:
            wait_for(lambda: {i for i, s in peer.states().items() if s == "alive"} == ids, 20,
                     f"peer {peer.peer_id} to see all four alive")
        yield cluster
    finally:
        cluster.stop_all()


def test_status_on_every_peer_lists_all_four_alive(four):
    ids = {p.peer_id for p in four.peers}
    for peer in four.peers:
        status = peer.status()
        assert status["peer_id"] == peer.peer_id
        alive = {n["NodeID"] for n in status["nodes"] if n["State"] == "alive"}
        assert alive == ids
        for node in status["nodes"]:
            assert node["Resources"]["CPU"] == 1.0
    text = p2p("status", "--home", four.peers[0].home).stdout
    assert all(pid in text for pid in ids) and "alive" in text


def test_drivers_on_either_peer_run_tasks_on_several_peers(four):
    for peer in four.peers[:2]:
        code = f"""
import collections, time
import p2pcompute as p2p
p2p.init(address="{peer.address}", token=open("{four.token_file}").read().strip())
@p2p.remote
def where():
    time.sleep(0.2)
    return p2p.get_runtime_context().node_id
print(sorted(collections.Counter(p2p.get([where.remote() for _ in range(12)], timeout=60))))
p2p.shutdown()
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        used = set(eval(out.stdout.strip().splitlines()[-1]))
        assert len(used) >= 2 and used <= {p.peer_id for p in four.peers}


def test_a_killed_peer_is_declared_dead_by_all_within_the_bound_then_rejoins(four):
    victim = four.peers[3]
    others = four.peers[:3]
    old_id = victim.peer_id
    bound_s = detection_bound_ms(MembershipConfig(), 4) / 1000
    os.kill(victim.pid, signal.SIGKILL)
    t0 = time.monotonic()
    for peer in others:
        wait_for(lambda: peer.states().get(old_id) == "dead", bound_s + SLACK_S, f"{peer.peer_id} to mark it dead")
    elapsed = time.monotonic() - t0
    print(f"\nkill -9 of one of 4 peers: every other peer marked it dead after {elapsed:.2f} s "
          f"(bound {bound_s:.1f} s)")
    four.restart(victim, via=others[1])  # rejoin through any member, not only the first
    new_id = victim.peer_id
    assert new_id != old_id
    for peer in others:
        wait_for(lambda: peer.states().get(new_id) == "alive", 15, f"{peer.peer_id} to see the restarted peer")
    wait_for(lambda: sum(s == "alive" for s in victim.states().values()) == 4, 15, "the restarted peer to see all")


def test_a_peer_that_stops_is_seen_as_left_at_once(four):
    leaving = four.peers[2]
    leaving_id = leaving.peer_id
    p2p("stop", "--home", leaving.home)
    t0 = time.monotonic()
    for peer in (four.peers[0], four.peers[1]):
        wait_for(lambda: peer.states().get(leaving_id) == "left", 2.0, f"{peer.peer_id} to see it left")
    print(f"\np2p stop: the others saw 'left' after {time.monotonic() - t0:.2f} s")
    assert not leaving.alive()
    assert p2p("status", "--home", leaving.home, check=False).returncode != 0


def test_a_wrong_or_missing_token_is_refused_and_the_cluster_is_unaffected(four, tmp_path):
    first = four.peers[0]
    before = first.states()
    bad_token = tmp_path / "bad-token"
    bad_token.write_text("not-the-cluster-token\n")
    intruder_home = str(tmp_path / "intruder")
    from cluster_util import free_port
    port = free_port()
    p2p("join", first.address, "--home", intruder_home, "--host", "127.0.0.1", "--port", str(port),
        "--num-cpus", "1", "--token-file", str(bad_token))
    try:
        from cluster_util import Peer
        intruder = Peer(intruder_home, port)
        # Give it time to try: it must never get in, and nobody may learn of it.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert set(intruder.states()) == {intruder.peer_id}
            assert first.states().keys() == before.keys()
            time.sleep(0.5)  # observing that nothing happens over a window
        missing = p2p("join", first.address, "--home", str(tmp_path / "none"), "--host", "127.0.0.1",
                      "--port", str(free_port()), check=False, env={k: v for k, v in os.environ.items()
                                                                      if k != "P2P_TOKEN"})
        assert missing.returncode != 0 and "token" in missing.stderr
        # A driver with the wrong token cannot attach either.
        code = f"""
import p2pcompute as p2p
try:
    p2p.init(address="{first.address}", token="wrong")
except p2p.errors.P2PError as e:
    print("REFUSED", type(e).__name__)
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert "REFUSED" in out.stdout, out.stdout + out.stderr
        assert first.states().keys() == before.keys()
    finally:
        p2p("stop", "--home", intruder_home, check=False)


def test_garbage_at_a_live_peer_port_is_dropped_and_the_peer_keeps_serving(four):
    import random
    import socket

    import zmq

    from p2pcompute.net.transport import CurveKeys
    first = four.peers[0]
    rng = random.Random(7)
    # 1. Raw bytes on the TCP port, without any handshake.
    for size in (0, 1, 10, 1000, 100_000):
        with socket.create_connection(("127.0.0.1", first.port), timeout=5) as s:
            s.sendall(bytes(rng.getrandbits(8) for _ in range(size)))
    # 2. With the right token: random, truncated and oversized frames through a real CURVE connection.
    keys = CurveKeys.from_token(open(four.token_file).read().strip())
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (keys.server_public, keys.client_public,
                                                                         keys.client_secret)
    sock.setsockopt(zmq.IDENTITY, b"fuzzer#x")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{first.port}")
    good = bytes([1, 1, 144]) + b"\x80\x05"  # header of a real message type, then a pickle that stops short
    for _ in range(200):
        kind = rng.randrange(4)
        if kind == 0:
            frame = bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
        elif kind == 1:
            frame = good[: rng.randrange(len(good) + 1)]
        elif kind == 2:
            frame = bytes([1, rng.randrange(256), rng.randrange(256)]) + os.urandom(rng.randrange(200))
        else:
            frame = os.urandom(rng.randrange(5))
        sock.send(frame)
    sock.send(b"\x01\x00\x01" + b"x" * (70 << 20))  # larger than the peer accepts
    log_path = os.path.join(first.home, "logs", "peer.log")
    # The frames have arrived once the peer has logged dropping them (LINGER 0: closing sooner loses them).
    wait_for(lambda: "dropped a bad frame" in open(log_path).read(), 30, "the peer to log the bad frames")
    sock.close()
    ctx.term()
    assert first.alive()
    assert {n for n, s in first.states().items() if s == "alive"} >= {p.peer_id for p in four.peers[:2]}

"""Nothing named is lost when two of five peers die at once; a really lost majority is recovered by command.

Five real peers. A detached named actor (max_restarts=2) is created from peer 2's driver; then peers 1 and
2 are SIGKILLed together: the table keeps a majority (5 replicas), the actor is restarted on a surviving
peer under its name, and `get_actor` reaches it. Then two of the three survivors are killed: the table has
lost its majority for good, operations fail at once with an error naming the way out, and
`p2p table recover` on the last peer re-forms it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cluster_util import Cluster, p2p, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


def table_of(peer) -> dict:
    try:
        return peer.status().get("table", {})
    except AssertionError:
        return {}


def agreed_table(peers) -> tuple[frozenset, str | None]:
    """The replica set and leader every given peer reports, or (empty, None) while they disagree."""
    views = [table_of(p) for p in peers]
    sets = {frozenset(v.get("replicas", [])) for v in views}
    leaders = {v.get("leader") for v in views}
    if len(sets) != 1 or len(leaders) != 1:
        return frozenset(), None
    return sets.pop(), leaders.pop()


PRELUDE = textwrap.dedent('''
    import os, sys, time
    import p2pcompute as p2p
    address, token = sys.argv[1:3]
    p2p.init(address=address, token=token)

    @p2p.remote
    class Greeter:
        def __init__(self):
            self.calls = 0
        def hello(self):
            self.calls += 1
            return p2p.get_runtime_context().get_node_id(), self.calls
''')

CREATE = PRELUDE + textwrap.dedent('''
    g = Greeter.options(name="greeter", lifetime="detached", max_restarts=2).remote()
    print("FIRST", *p2p.get(g.hello.remote(), timeout=60), flush=True)
    p2p.shutdown()
''')

# Waits for the go file (written right after the kill, holding the kill's wall time), then retries
# get_actor + a call until the restarted actor answers.
REACH = PRELUDE + textwrap.dedent('''
    go = sys.argv[3]
    print("READY", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    killed_at = float(open(go).read())
    deadline = time.monotonic() + 90
    while True:
        try:
            g = p2p.get_actor("greeter")
            node, calls = p2p.get(g.hello.remote(), timeout=5)
            print("ANSWERED", node, calls, f"{time.time() - killed_at:.2f}", flush=True)
            break
        except Exception as exc:
            print("RETRY", type(exc).__name__, str(exc)[:200], file=sys.stderr, flush=True)
            if time.monotonic() > deadline:
                print("FAILED", type(exc).__name__, exc, flush=True)
                sys.exit(1)
            time.sleep(0.1)
    t0 = time.monotonic()
    p2p.kv.put("after-two-deaths", "v")
    print("KV", p2p.kv.get("after-two-deaths", linearizable=True), f"{time.monotonic() - t0:.2f}", flush=True)
    p2p.shutdown()
''')

TABLE_OP = PRELUDE + textwrap.dedent('''
    t0 = time.monotonic()
    try:
        if sys.argv[3] == "put":
            p2p.kv.put(sys.argv[4], "v")
        print("OK", p2p.kv.get(sys.argv[4], linearizable=True), flush=True)
    except Exception as exc:
        print("ERROR", type(exc).__name__, f"{time.monotonic() - t0:.2f}", exc, flush=True)
    p2p.shutdown()
''')


def driver(code: str, peer, token: str, *extra: str, wait: bool = True):
    args = [sys.executable, "-c", code, peer.address, token, *extra]
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    cluster = Cluster(str(tmp_path_factory.mktemp("two-deaths")))
    try:
        for _ in range(5):
            cluster.start()
        wait_for(lambda: len(agreed_table(cluster.peers)[0]) == 5 and agreed_table(cluster.peers)[1], 60,
                 "the table to grow to 5 replicas with a leader")
        yield cluster
    finally:
        cluster.stop_all()


def test_detached_actor_survives_two_peers_killed_together(five, tmp_path):
    token = open(five.token_file).read().strip()
    first = driver(CREATE, five.peers[1], token)
    assert "FIRST" in first, first

    go = str(tmp_path / "go")
    reacher = driver(REACH, five.peers[2], token, go, wait=False)
    try:
        assert reacher.stdout.readline().startswith("READY")
        victims = five.peers[:2]
        for peer in victims:
            os.kill(peer.pid, signal.SIGKILL)
        with open(go + ".tmp", "w") as f:
            f.write(repr(time.time()))
        os.rename(go + ".tmp", go)
        out, err = reacher.communicate(timeout=150)
    finally:
        if reacher.poll() is None:
            reacher.kill()
    assert reacher.returncode == 0, out + err
    answered = next(line for line in out.splitlines() if line.startswith("ANSWERED")).split()
    node, calls, took_s = answered[1], int(answered[2]), float(answered[3])
    dead_ids = {p.peer_id for p in five.peers[:2]}
    assert node not in dead_ids, "the actor answers from a surviving peer"
    assert calls == 1, "a new incarnation (its constructor ran again)"
    assert "KV v" in out, out
    print(f"\ntwo of five peers SIGKILLed: the detached actor answered again {took_s:.2f} s after the kill")


def test_a_lost_majority_fails_fast_and_is_recovered_by_command(five):
    survivors = [p for p in five.peers if p.alive()]
    assert len(survivors) == 3
    token = open(five.token_file).read().strip()
    # After two deaths with no spare the set shrinks to the three survivors.
    live_ids = {p.peer_id for p in survivors}
    wait_for(lambda: agreed_table(survivors)[0] == live_ids, 60, "the replica set to shrink to the survivors")
    last = survivors[-1]
    for peer in survivors[:2]:
        os.kill(peer.pid, signal.SIGKILL)
    lost = {p.peer_id for p in survivors[:2]}
    wait_for(lambda: all(last.states().get(pid) == "dead" for pid in lost), 60, "the two deaths to be declared")

    out = driver(TABLE_OP, last, token, "put", "during-loss")
    assert out.startswith("ERROR TableError"), out
    took_s = float(out.split()[2])
    assert took_s < 5, f"a table operation with the majority lost took {took_s} s to fail"
    assert "lost its majority" in out and "p2p table recover" in out
    assert all(pid in out for pid in lost), "the error names the lost replicas"

    recovered = p2p("table", "recover", "--home", last.home)
    assert "table recovered" in recovered.stdout and last.peer_id in recovered.stdout, recovered.stdout
    assert "May be lost" in recovered.stdout
    wait_for(lambda: "OK v" in driver(TABLE_OP, last, token, "put", "after-recover"), 30,
             "the recovered table to serve")
    assert "OK v" in driver(TABLE_OP, last, token, "get", "after-two-deaths")  # what was written before is kept

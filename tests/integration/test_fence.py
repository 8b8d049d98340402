"""Deaths are final, with real processes: a peer paused (SIGSTOP) past the suspicion timeout is declared dead
by the others; resumed (SIGCONT), it is fenced — it exits, saying why — instead of coming back under its old
id, while the rest of the cluster keeps working. Its driver's calls then fail at once with an error naming
the cause.

The second test pauses a peer whose actor borrows an object in use (another peer's driver owns it): once the
peer is declared dead the owner writes the borrow off and frees the object, and on resume the fence takes the
actor's process too, so no live process is left holding a ref to the freed object.

Membership timeouts are made short through the config surface (`P2P_MEMBERSHIP_*` environment variables,
inherited by `p2p start`/`p2p join`; see docs/operations.md), so the pause need only be a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

import psutil
import pytest

from cluster_util import Cluster, wait_for
from p2pcompute.net.membership_config import MembershipConfig, detection_bound_ms

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(150)]

SLACK_S = 5.0  # scheduling noise on a loaded 2-core machine
FAST = {"P2P_MEMBERSHIP_PROBE_INTERVAL_MS": "250", "P2P_MEMBERSHIP_PROBE_TIMEOUT_MS": "100"}

GET_TIMEOUT_S = 15
ARRAY_LEN = 512 * 1024  # 4 MiB of float64: stored in shared memory, not inline
# The actor's p2p.get timeout. Not honoured once x is freed while the actor's peer is paused: the read falls
# back to a fetch through that peer, which waits up to 60 s (ValueReader.read_object); nothing here relies on it.
READ_TIMEOUT_S = 2
FREE_DEADLINE_S = 20  # detection is done; the owner drops a dead process's borrows after a 5 s grace

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


# ---- a paused peer whose processes borrow refs in use ---------------------------------------------------

BORROW_DRIVER = """
import gc, json, os, sys, threading, time
import numpy as np
import p2pcompute as p2p
from p2pcompute.internal import memory_report
from p2pcompute.util import state
from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy
p2p.init(address="{address}", token=open("{token_file}").read().strip())
FREE_DEADLINE_S = {free_deadline_s}


@p2p.remote(max_concurrency=2)
class Reader:
    def start(self, refs, path):
        self.ref = refs[0]  # kept for the actor's life: a borrow, not an argument value
        threading.Thread(target=self._read, args=(path,), daemon=True).start()
        return os.getpid()

    def _read(self, path):
        with open(path, "a", buffering=1) as f:
            for n in range(1, 1 << 30):
                t_start = time.time()
                f.write(f"begin {{n}} {{t_start}}\\n")
                try:
                    total = float(p2p.get(self.ref, timeout={read_timeout_s}).sum())
                    f.write(f"ok {{n}} {{t_start}} {{time.time()}} {{total}}\\n")
                except Exception as exc:  # noqa: BLE001 - what failed, and how, is what the test reads
                    why = f"{{type(exc).__name__}}: {{exc}}".replace("\\n", " ")
                    f.write(f"error {{n}} {{t_start}} {{time.time()}} {{why}}\\n")
                time.sleep(0.02)  # a reader's pace, not a wait on another process

    def pid(self):
        return os.getpid()


def listed(oid):
    \"\"\"The owner's row for oid (cluster view), and the peers whose store still holds a copy.\"\"\"
    rows = [r for r in state.list_objects(limit=100000) if r["object_id"] == oid]
    copies = [p.get("peer") for p in memory_report() for o in p.get("objects", ()) if o[0] == oid]
    return rows, copies


node_id = [n["NodeID"] for n in p2p.nodes() if "tcp://{paused_address}" in str(n.get("Address")).split()][0]
x = p2p.put(np.ones({array_len}))  # a few MB: it lives in the shared-memory store
oid = x.hex()
reader = Reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
pid = p2p.get(reader.start.remote([x], "{reads_path}"), timeout=60)
rows, copies = listed(oid)
print("ready", oid, pid, json.dumps(rows[0]["borrowers"] if rows else None), flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "drop":
        del x
        gc.collect()
        t_listed = time.time()
        deadline = time.monotonic() + FREE_DEADLINE_S
        while time.monotonic() < deadline:
            rows, copies = listed(oid)
            if not rows and not copies:
                print("freed", t_listed, time.time(), flush=True)
                break
            t_listed = time.time()
            time.sleep(0.02)  # polling the owner's view, bounded by the deadline
        else:
            print("not-freed", json.dumps([rows, copies]), flush=True)
    elif command == "call":
        try:
            print("result", p2p.get(reader.pid.remote(), timeout=30), flush=True)
        except Exception as exc:  # noqa: BLE001 - the exact type is what the test checks
            print("error", type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
"""


def _process_gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts as gone: it runs no code)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _reads(path: str) -> dict[int, dict]:
    """The actor's reads by number: {"start": t} while in progress, then also "end", "ok" and "detail"."""
    reads: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                continue  # a line still being written
            kind, n, t_start, *rest = line.split(" ", 4)
            read = reads.setdefault(int(n), {"start": float(t_start)})
            if kind in ("ok", "error"):
                read.update(end=float(rest[0]), ok=kind == "ok", detail=rest[1].strip())
    return reads


def test_refs_borrowed_by_a_paused_peers_actor_are_freed_and_the_actor_is_gone_when_it_is_fenced(three):
    config = MembershipConfig(probe_interval_ms=250, probe_timeout_ms=100)
    bound_s = detection_bound_ms(config, 3) / 1000
    paused, others = three.peers[2], three.peers[:2]
    paused_id, paused_pid = paused.peer_id, paused.pid
    reads_path = os.path.join(three.base, "reads.log")
    code = BORROW_DRIVER.format(address=others[0].address, token_file=three.token_file,
                                paused_address=paused.address, reads_path=reads_path, array_len=ARRAY_LEN,
                                free_deadline_s=FREE_DEADLINE_S, read_timeout_s=READ_TIMEOUT_S)
    driver = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)

    def ask(command: str) -> list[str]:
        driver.stdin.write(command + "\n")
        driver.stdin.flush()
        line = driver.stdout.readline()  # the driver answers within its own deadlines
        assert line, f"the driver exited:\n{driver.stderr.read()}"
        return line.split()

    try:
        ready = driver.stdout.readline().split(maxsplit=3)
        assert ready and ready[0] == "ready", driver.stderr.read()
        oid, actor_pid, borrowers = ready[1], int(ready[2]), json.loads(ready[3])
        assert borrowers, "the owner lists no borrower of x: the actor's ref is not a borrow"
        # The actor is using the ref right up to the pause: a read that began after we started looking.
        t_look = time.time()
        wait_for(lambda: [r for r in _reads(reads_path).values() if r.get("ok") and r["start"] > t_look], 30,
                 "the actor to read x")
        os.kill(paused_pid, signal.SIGSTOP)  # the peer process only: the actor's process keeps running
        t_stop = time.time()
        for peer in others:
            wait_for(lambda: peer.states().get(paused_id) == "dead", bound_s + SLACK_S,
                     f"{peer.peer_id} to declare the paused peer dead")
        t_dead = time.time()
        # The driver drops its own ref: the borrower was written off with its peer, so the owner frees x.
        answer = ask("drop")
        assert answer[0] == "freed", f"the owner did not free x ({oid}) within {FREE_DEADLINE_S} s: {answer}"
        t_last_listed, t_freed_seen = float(answer[1]), float(answer[2])

        # Before the resume, the written-off actor (alive, unaware: only its peer is paused) tries x again: a
        # read begun after the free was seen, or one begun after x was last listed and still unserved 0.2 s on
        # (a read of the mapped copy takes about a millisecond; a pending one waits on the paused peer).
        def tried_after_free():
            reads = _reads(reads_path)
            last = reads[max(reads)]
            return any(r["start"] > t_freed_seen for r in reads.values()) or (
                last["start"] > t_last_listed and "end" not in last and time.time() - last["start"] > 0.2)

        wait_for(tried_after_free, SLACK_S, "the written-off actor to try x again", interval_s=0.02)
        os.kill(paused_pid, signal.SIGCONT)
        t_cont = time.time()
        wait_for(lambda: not paused.alive(), 30, "the resumed peer to exit, fenced")
        wait_for(lambda: _process_gone(actor_pid), 30, "the actor's process to exit with its fenced peer")
        t_actor_gone = time.time()
        call = ask("call")
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.communicate()
    reads = sorted(_reads(reads_path).values(), key=lambda r: r["start"])
    # What this can claim, and what not. The actor's process was never paused (only its peer daemon was): it
    # ran, and read x, through the whole pause and its peer's death, until the fence took it. The owner freed
    # x at a moment between t_last_listed (still listed) and t_freed_seen (gone from the owner's table and
    # every store), so a read is "after the free" only if it *began* after t_freed_seen; one begun in that
    # window may have been served before the free. Freeing is an unlink, so a read racing the free sees the
    # old pages, never reused memory. What must not happen is a written-off process getting x's value once
    # its owner freed it, before or after its peer resumed. Both stamps are this machine's time.time().
    after_free = [r for r in reads if r.get("ok") and r["start"] > t_freed_seen]
    ok_before_stop = [r for r in reads if r.get("ok") and r["end"] <= t_stop]
    last_ok = max((r for r in reads if r.get("ok")), key=lambda r: r["start"])
    not_served = Counter(r.get("detail", "killed").split(":")[0] for r in reads if r["start"] > last_ok["start"])
    print(f"\n[fence+borrow] dead {t_dead - t_stop:.1f} s after the SIGSTOP (bound {bound_s:.1f} s); x freed "
          f"{t_freed_seen - t_dead:.1f} s after that (seen {t_freed_seen - t_last_listed:.3f} s after last listed);"
          f" {sum(1 for r in reads if r.get('ok') and r['start'] > t_stop)} reads of x during the pause, the "
          f"last begun {last_ok['start'] - t_last_listed:+.3f} s from last listed; resumed "
          f"{t_cont - t_freed_seen:.2f} s after the free; actor gone {t_actor_gone - t_cont:.2f} s after the "
          f"SIGCONT; reads not served after that: {dict(not_served)}; "
          f"the call: {' '.join(call)[:160]}")
    assert ok_before_stop and t_stop - ok_before_stop[-1]["end"] < 2.0, "the actor did not read x up to the pause"
    assert not after_free, f"the actor read x after its owner freed it: {after_free[:3]}"
    assert call[:2] == ["error", "ActorDiedError"], call

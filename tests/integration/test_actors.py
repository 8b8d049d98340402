"""Actors: state, per-caller order, handles passed around, kill, restarts, async concurrency, and
constructors that fail."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import p2pcompute as p2p
import p2pcompute.api
from p2pcompute import errors

from itest_util import alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@p2p.remote
class Log:
    def __init__(self, start=()):
        self.items = list(start)
        self.inits = 1

    def append(self, x):
        self.items.append(x)
        return len(self.items)

    def read(self):
        return list(self.items)

    def pid(self):
        return os.getpid()

    def crash(self):
        os._exit(1)


@p2p.remote
def append_via(handle, values):
    return p2p.get([handle.append.remote(v) for v in values])[-1]


@p2p.remote
class Forwarder:
    def __init__(self, target):
        self.target = target

    def forward(self, x):
        return p2p.get(self.target.append.remote(x))


def test_state_is_kept_across_calls(cluster):
    log = Log.remote(["a"])
    assert p2p.get(log.append.remote("b"), timeout=30) == 2
    assert p2p.get(log.append.remote("c"), timeout=30) == 3
    assert p2p.get(log.read.remote(), timeout=30) == ["a", "b", "c"]


def test_calls_from_one_caller_run_in_submission_order(cluster):
    log = Log.remote()
    refs = [log.append.remote(i) for i in range(200)]
    final = log.read.remote()
    assert p2p.get(final, timeout=30) == list(range(200))
    assert p2p.get(refs, timeout=30) == list(range(1, 201))


def test_handles_work_in_tasks_and_other_actors(cluster):
    log = Log.remote()
    assert p2p.get(append_via.remote(log, ["t1", "t2"]), timeout=30) == 2
    fwd = Forwarder.remote(log)
    assert p2p.get(fwd.forward.remote("f1"), timeout=30) == 3
    assert p2p.get(log.read.remote(), timeout=30) == ["t1", "t2", "f1"]


def test_kill_makes_later_calls_fail(cluster):
    log = Log.remote()
    pid = p2p.get(log.pid.remote(), timeout=30)
    p2p.kill(log)
    wait_until(lambda: not alive([pid]), 10, what="the killed actor's process to exit")
    for _ in range(2):
        with pytest.raises(errors.ActorDiedError):
            p2p.get(log.read.remote(), timeout=10)


def test_call_after_kill_fails_even_if_peer_is_slow(cluster):
    """kill() is the owner's decision: a call made after it must fail, however slowly the peer acts."""
    log = Log.remote()
    p2p.get(log.pid.remote(), timeout=30)
    peer_pid = p2pcompute.api._state["peer"].proc.pid
    os.kill(peer_pid, signal.SIGSTOP)  # the peer is slow to carry out the kill
    try:
        p2p.kill(log)
        after = log.append.remote("after-kill")
        p2p.wait([after], timeout=3)
    finally:
        os.kill(peer_pid, signal.SIGCONT)
    with pytest.raises(errors.ActorDiedError):
        p2p.get(after, timeout=10)


@p2p.remote
class Waiter:
    def wait_for(self, gate, started):
        open(started, "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "finished"


def test_kill_fails_the_call_in_flight(cluster, tmp_path):
    actor = Waiter.remote()
    gate, started = tmp_path / "gate", tmp_path / "started"
    try:
        ref = actor.wait_for.remote(str(gate), str(started))
        wait_until(started.exists, 20, what="the call to start")
        p2p.kill(actor)
        with pytest.raises(errors.ActorDiedError):
            p2p.get(ref, timeout=10)
    finally:
        gate.touch()


def test_kill_with_restart_allowed_restarts_the_actor(cluster):
    log = Log.options(max_restarts=1).remote(["init"])
    assert p2p.get(log.append.remote("x"), timeout=30) == 2
    pid = p2p.get(log.pid.remote(), timeout=30)
    p2p.kill(log, no_restart=False)
    wait_until(lambda: not alive([pid]), 10, what="the killed actor's process to exit")
    new_pid = wait_until(lambda: _pid_or_none(log), 20, what="the restarted actor to answer")
    assert new_pid != pid
    assert p2p.get(log.read.remote(), timeout=20) == ["init"]


def test_max_restarts_reruns_constructor_after_crash(cluster):
    log = Log.options(max_restarts=1).remote(["init"])
    assert p2p.get(log.append.remote("x"), timeout=30) == 2
    pid = p2p.get(log.pid.remote(), timeout=30)
    crash = log.crash.remote()
    with pytest.raises(errors.ActorUnavailableError):  # lost with its worker; the actor is restarting
        p2p.get(crash, timeout=20)
    # Restarted: a new process, the constructor ran again (state reset), and calls work.
    new_pid = wait_until(lambda: _pid_or_none(log), 20, what="the restarted actor to answer")
    assert new_pid != pid
    assert p2p.get(log.read.remote(), timeout=20) == ["init"]
    assert p2p.get(log.append.remote("y"), timeout=20) == 2


def _pid_or_none(handle):
    try:
        return p2p.get(handle.pid.remote(), timeout=10)
    except errors.ActorUnavailableError:
        return None


def test_actor_without_restarts_is_dead_after_crash(cluster):
    log = Log.remote()
    assert p2p.get(log.append.remote(1), timeout=30) == 1
    with pytest.raises(errors.ActorDiedError):  # no restarts: the call dies with the actor
        p2p.get(log.crash.remote(), timeout=20)
    with pytest.raises(errors.ActorDiedError):
        p2p.get(log.read.remote(), timeout=20)


@p2p.remote
class Sleepy:
    def __init__(self):
        self.current = 0
        self.peak = 0

    async def nap(self, seconds):
        self.current += 1
        self.peak = max(self.peak, self.current)
        await asyncio.sleep(seconds)
        self.current -= 1
        return seconds

    async def get_peak(self):
        return self.peak


def test_async_methods_run_concurrently(cluster):
    actor = Sleepy.remote()
    p2p.get(actor.get_peak.remote(), timeout=30)  # created and warm
    start = time.monotonic()
    assert p2p.get([actor.nap.remote(0.5) for _ in range(10)], timeout=30) == [0.5] * 10
    elapsed_s = time.monotonic() - start
    assert elapsed_s < 2.5, f"10 concurrent 0.5 s naps took {elapsed_s:.2f} s"
    assert p2p.get(actor.get_peak.remote(), timeout=30) == 10


def test_max_concurrency_bounds_async_methods(cluster):
    actor = Sleepy.options(max_concurrency=2).remote()
    assert p2p.get([actor.nap.remote(0.1) for _ in range(6)], timeout=30) == [0.1] * 6
    assert p2p.get(actor.get_peak.remote(), timeout=30) == 2


@p2p.remote
class Threaded:
    def __init__(self):
        self.lock = threading.Lock()
        self.current = 0
        self.peak = 0

    def work(self, seconds):
        with self.lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
        time.sleep(seconds)  # simulated work
        with self.lock:
            self.current -= 1

    def get_peak(self):
        return self.peak


def test_max_concurrency_runs_sync_methods_in_threads(cluster):
    actor = Threaded.options(max_concurrency=2).remote()
    p2p.get([actor.work.remote(0.2) for _ in range(6)], timeout=30)
    assert p2p.get(actor.get_peak.remote(), timeout=30) == 2
    # Without max_concurrency, calls run one at a time.
    serial = Threaded.remote()
    p2p.get([serial.work.remote(0.05) for _ in range(4)], timeout=30)
    assert p2p.get(serial.get_peak.remote(), timeout=30) == 1


class BadConfig(Exception):
    pass


@p2p.remote
class Broken:
    def __init__(self, flag):
        raise BadConfig(f"bad flag {flag}")

    def ping(self):
        return "pong"


def test_constructor_failure_surfaces_original_exception_type(cluster):
    actor = Broken.remote("zz")
    for _ in range(2):  # every call, not only the first
        with pytest.raises(BadConfig) as info:
            p2p.get(actor.ping.remote(), timeout=30)
        assert isinstance(info.value, errors.TaskError)
        assert "bad flag zz" in str(info.value)

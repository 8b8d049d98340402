"""`pool.Executor` against `concurrent.futures` semantics, and `pool.ActorPool` against Ray's ActorPool."""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest

import p2pcompute as p2p
from p2pcompute.mlkit.pool import ActorPool, Executor

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]

TIMEOUT_S = 60


def mul(x, y):
    return x * y


def slow_identity(x, wait_s):
    time.sleep(wait_s)
    return x


def fail(msg):
    raise ValueError(msg)


def test_submit_and_result(ml_cluster):
    with Executor() as ex:
        assert ex.submit(mul, 6, 7).result(TIMEOUT_S) == 42
        assert ex.submit(mul, x=2, y=3).result(TIMEOUT_S) == 6


def test_map_in_order_and_chunked(ml_cluster):
    with Executor() as ex:
        assert list(ex.map(mul, range(20), range(20))) == [i * i for i in range(20)]
        assert list(ex.map(mul, range(50), range(50), chunksize=7)) == [i * i for i in range(50)]
        with pytest.raises(ValueError):
            ex.map(mul, [1], [1], chunksize=0)


def test_exception_surfaces_with_its_type(ml_cluster):
    with Executor() as ex:
        fut = ex.submit(fail, "boom")
        with pytest.raises(ValueError, match="boom"):
            fut.result(TIMEOUT_S)
        assert isinstance(fut.exception(TIMEOUT_S), ValueError)


def test_as_completed_and_wait(ml_cluster):
    with Executor() as ex:
        futs = [ex.submit(slow_identity, i, 0.6 if i == 0 else 0.0) for i in range(6)]
        order = [f.result() for f in cf.as_completed(futs, timeout=TIMEOUT_S)]
        assert sorted(order) == list(range(6))
        assert order[-1] == 0  # the slow one finishes last
        done, not_done = cf.wait(futs, timeout=TIMEOUT_S)
        assert len(done) == 6 and not not_done


def test_cancel_queued_but_not_running(ml_cluster):
    with Executor(max_workers=1) as ex:
        running = ex.submit(slow_identity, "first", 1.0)
        queued = ex.submit(slow_identity, "second", 0.0)
        assert queued.cancel()
        assert queued.cancelled()
        # The first one starts (its future turns running) and cannot be cancelled any more.
        deadline = time.monotonic() + TIMEOUT_S
        while not running.running() and not running.done() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling the dispatcher thread's state, bounded by the deadline
        assert not running.cancel()
        assert running.result(TIMEOUT_S) == "first"
        with pytest.raises(cf.CancelledError):
            queued.result(0)


def test_done_callbacks_and_shutdown(ml_cluster):
    seen = []
    ex = Executor()
    fut = ex.submit(mul, 3, 3)
    fut.add_done_callback(lambda f: seen.append(f.result()))
    ex.shutdown(wait=True)
    assert fut.done() and seen == [9]
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1, 1)


def test_shutdown_cancel_futures(ml_cluster):
    ex = Executor(max_workers=1)
    futs = [ex.submit(slow_identity, i, 0.3) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert futs[0].result(0) == 0
    assert sum(f.cancelled() for f in futs) >= 3


def test_bad_max_workers(ml_cluster):
    with pytest.raises(ValueError):
        Executor(max_workers=0)


@p2p.remote
class Doubler:
    def __init__(self):
        self.calls = 0

    def double(self, x, wait_s=0.0):
        time.sleep(wait_s)
        self.calls += 1
        return 2 * x

    def count(self):
        return self.calls


def test_actor_pool_map_and_unordered(ml_cluster):
    actors = [Doubler.remote(), Doubler.remote()]
    pool = ActorPool(actors)
    assert list(pool.map(lambda a, v: a.double.remote(v), range(10))) == [2 * i for i in range(10)]
    got = list(pool.map_unordered(lambda a, v: a.double.remote(v, 0.3 if v == 0 else 0.0), range(6)))
    assert sorted(got) == [2 * i for i in range(6)]
    assert got[-1] == 0
    # Both actors did work.
    assert all(c > 0 for c in p2p.get([a.count.remote() for a in actors]))


def test_actor_pool_submit_get_next(ml_cluster):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)  # queued: the only actor is busy
    assert pool.has_next()
    assert pool.get_next(timeout=TIMEOUT_S) == 2
    assert pool.get_next(timeout=TIMEOUT_S) == 4
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    pool.submit(lambda a, v: a.double.remote(v, 2.0), 5)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.2)
    assert pool.get_next_unordered(timeout=TIMEOUT_S) == 10


def test_actor_pool_bad_input(ml_cluster):
    with pytest.raises(ValueError):
        ActorPool([])
    with pytest.raises(TypeError):
        ActorPool([object()])

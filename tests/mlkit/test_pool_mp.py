"""`pool.Pool` against the core of CPython's own `multiprocessing.Pool` tests (Lib/test/_test_multiprocessing.py,
`_TestPool`, `_TestPoolWorkerErrors`, `_TestPoolWorkerLifetime`), rewritten for a pool of cluster actors.

Timings are generous (a loaded 2-core machine); waits are `get(timeout=...)` deadlines, never sleeps in the test.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from p2pcompute.mlkit.pool import Pool

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]

TIMEOUT_S = 60  # bound on any single result on a loaded machine


def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def mul(x, y):
    return x * y


def raising():
    raise KeyError("key")


def raise_large_valuerror(wait):
    time.sleep(wait)
    raise ValueError("x" * 1024 ** 2)


def identity(x):
    return x


def pid_of(_):
    return os.getpid()


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total, when):
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


_initialized = {}


def init_marker(value):
    _initialized["v"] = value


def read_marker(_):
    return _initialized.get("v")


def unpicklable_result(_):
    import threading
    return threading.Lock()


@pytest.fixture(scope="module")
def _shared_pool(_ml_cluster_session):
    # One pool for the tests that leave it as they found it (making a pool costs two actors).
    # Started as the `ml_cluster` fixture starts it (a module-scoped fixture cannot use that function-scoped one).
    import p2pcompute as p2p
    if not p2p.is_initialized():
        p2p.init(num_cpus=2)
    # Its actors ask for no CPU, so the tests that make their own pools still find the cluster's two CPUs.
    p = Pool(2, ray_remote_args={"num_cpus": 0})
    yield p
    p.terminate()
    p.join()


@pytest.fixture
def pool(_shared_pool, ml_cluster):
    return _shared_pool


def test_apply(pool):
    assert pool.apply(sqr, (5,)) == sqr(5)
    assert pool.apply(sqr, (), {"x": 3}) == sqr(x=3)


def test_map(pool):
    assert pool.map(sqr, list(range(10))) == [sqr(i) for i in range(10)]
    assert pool.map(sqr, list(range(100)), chunksize=20) == [sqr(i) for i in range(100)]


def test_starmap(pool):
    tuples = list(zip(range(10), range(9, -1, -1)))
    assert pool.starmap(mul, tuples) == [mul(*t) for t in tuples]
    tuples = list(zip(range(100), range(99, -1, -1)))
    assert pool.starmap(mul, tuples, chunksize=20) == [mul(*t) for t in tuples]


def test_starmap_async(pool):
    tuples = list(zip(range(100), range(99, -1, -1)))
    assert pool.starmap_async(mul, tuples).get(TIMEOUT_S) == [mul(*t) for t in tuples]


def test_map_async(pool):
    assert pool.map_async(sqr, list(range(10))).get(TIMEOUT_S) == [sqr(i) for i in range(10)]


def test_map_async_callbacks(pool):
    call_args = []
    pool.map_async(int, ["1"], callback=call_args.append, error_callback=call_args.append).wait(TIMEOUT_S)
    assert call_args == [[1]]
    result = pool.map_async(int, ["a"], callback=call_args.append, error_callback=call_args.append)
    result.wait(TIMEOUT_S)
    assert result.ready() and not result.successful()
    assert len(call_args) == 2 and isinstance(call_args[1], ValueError)


def test_map_unpicklable_result(pool):
    # The worker cannot send a lock back: the caller gets an error, not a hang.
    with pytest.raises(Exception):
        pool.map_async(unpicklable_result, [1]).get(TIMEOUT_S)


def test_map_chunksize(pool):
    assert pool.map_async(sqr, [], chunksize=1).get(TIMEOUT_S) == []
    with pytest.raises(ValueError):
        pool.map(sqr, [1, 2], chunksize=0)


def test_map_handle_iterable_exception(pool):
    # An iterable that raises: the error surfaces at the caller (before anything runs).
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(10, 3), 1)


def test_async(pool):
    res = pool.apply_async(sqr, (7, 0.2))
    assert res.get(TIMEOUT_S) == 49
    assert res.ready() and res.successful()


def test_async_timeout(pool):
    res = pool.apply_async(sqr, (6, 1.5))
    with pytest.raises(multiprocessing.TimeoutError):
        res.get(timeout=0.5)
    assert not res.ready()
    with pytest.raises(ValueError):
        res.successful()  # not ready yet


def test_imap(pool):
    it = pool.imap(sqr, list(range(10)))
    assert list(it) == [sqr(i) for i in range(10)]
    it = pool.imap(sqr, list(range(10)))
    for i in range(10):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)
    it = pool.imap(sqr, list(range(1000)), chunksize=100)
    for i in range(1000):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)


def test_imap_handle_iterable_exception(pool):
    it = pool.imap(sqr, exception_throwing_generator(10, 3), 1)
    for i in range(3):
        assert next(it) == i * i
    with pytest.raises(SayWhenError):
        next(it)


def test_imap_worker_error_in_order(pool):
    # The error of item 2 surfaces at its place in the order, after the results before it.
    it = pool.imap(divide_ten, [1, 2, 0, 5])
    assert next(it) == 10.0 and next(it) == 5.0
    with pytest.raises(ZeroDivisionError):
        next(it)


def divide_ten(x):
    return 10 / x


def test_imap_unordered(pool):
    it = pool.imap_unordered(sqr, list(range(100)))
    assert sorted(it) == [sqr(i) for i in range(100)]
    it = pool.imap_unordered(sqr, list(range(1000)), chunksize=100)
    assert sorted(it) == [sqr(i) for i in range(1000)]


def test_imap_unordered_yields_each_once_and_early(pool):
    # A slow first item does not hold back the quick ones behind it.
    waits = [1.5] + [0.0] * 9
    it = pool.imap_unordered(sqr_wait, list(enumerate(waits)))
    got = [it.next(timeout=TIMEOUT_S) for _ in range(10)]
    assert sorted(got) == list(range(10))
    # The slow one came (nearly) last: at most one quick chunk was queued behind it at its actor.
    assert got.index(0) >= 8


def sqr_wait(pair):
    i, wait = pair
    time.sleep(wait)
    return i


def test_imap_next_timeout(pool):
    it = pool.imap(sqr_wait, [(1, 1.5)])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.3)
    assert it.next(timeout=TIMEOUT_S) == 1


def test_make_pool(ml_cluster):
    with pytest.raises(ValueError):
        Pool(-1)
    with pytest.raises(ValueError):
        Pool(0)
    p = Pool(1)
    try:
        assert p._processes == 1
    finally:
        p.close()
        p.join()


def test_terminate(ml_cluster):
    p = Pool(2)
    result = p.map_async(time.sleep, [0.1 for _ in range(10000)], chunksize=1)
    p.terminate()
    start = time.monotonic()
    p.join()
    assert time.monotonic() - start < 10.0
    assert not result.ready()  # never completes, never raises at the caller


def test_empty_iterable(pool):
    assert pool.map(sqr, []) == []
    assert list(pool.imap(sqr, [])) == []
    assert list(pool.imap_unordered(sqr, [])) == []
    assert pool.map_async(sqr, []).get(TIMEOUT_S) == []


def test_traceback(pool):
    # The worker's exception arrives with its type and the worker's traceback as its cause.
    with pytest.raises(KeyError) as info:
        pool.apply(raising)
    assert "raise KeyError" in str(info.value.__cause__)
    with pytest.raises(ValueError) as info:
        pool.map(raise_large_valuerror, [0.0])
    assert len(str(info.value)) > 1024 ** 2 - 100


def test_map_no_failfast(pool):
    # A failed chunk does not stop the pool: other work still completes.
    with pytest.raises(ZeroDivisionError):
        pool.map(divide_ten, [1, 0, 2])
    assert pool.map(divide_ten, [1, 2]) == [10.0, 5.0]


def test_apply_async_callbacks(pool):
    got, errs = [], []
    pool.apply_async(sqr, (4,), callback=got.append, error_callback=errs.append).wait(TIMEOUT_S)
    pool.apply_async(raising, callback=got.append, error_callback=errs.append).wait(TIMEOUT_S)
    assert got == [16]
    assert len(errs) == 1 and isinstance(errs[0], KeyError)


def test_close_then_join_waits_for_work(ml_cluster):
    p = Pool(2)
    res = p.map_async(sqr_wait, [(i, 0.02) for i in range(10)], chunksize=1)
    p.close()
    with pytest.raises(ValueError):
        p.apply(sqr, (1,))
    p.join()
    assert res.ready() and res.get(0) == list(range(10))


def test_join_on_running_pool_is_an_error(pool):
    with pytest.raises(ValueError):
        pool.join()


def test_initializer_and_context_manager(ml_cluster):
    # The initializer runs in every worker before its first call; leaving the `with` terminates the pool.
    with Pool(2, initializer=init_marker, initargs=("ready",)) as p:
        assert p.map(read_marker, range(8), chunksize=1) == ["ready"] * 8
    with pytest.raises(ValueError):
        p.map_async(sqr, [1])


def test_maxtasksperchild_recycles_workers(ml_cluster):
    # _TestPoolWorkerLifetime: with maxtasksperchild a worker runs at most that many chunks, then is replaced.
    with Pool(1, maxtasksperchild=2) as p:
        pids = p.map(pid_of, range(4), chunksize=1)
    counts = {pid: pids.count(pid) for pid in set(pids)}
    assert sorted(counts.values()) == [2, 2]

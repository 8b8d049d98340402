"""get, put, wait and cancel on the shared cluster.

Tasks that must stay busy wait for a release file (`gate`), so a test holds CPUs exactly as long as it
needs and never sleeps on wall time to let something happen.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest

import p2pcompute as p2p
from p2pcompute import errors

from itest_util import alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@p2p.remote
def gated(gate: str, started: str | None = None, value=None, limit_s: float = 30.0):
    """Hold a CPU until the file `gate` exists (bounded), then return `value`."""
    if started:
        # Written whole, then renamed: a reader that sees the file sees the pid.
        with open(started + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(started + ".tmp", started)
    deadline = time.monotonic() + limit_s
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.01)
    return value


@p2p.remote
def touch(path: str):
    with open(path, "a") as f:
        f.write("ran\n")
    return "ran"


@p2p.remote
def sleep_then(seconds: float, value):
    time.sleep(seconds)
    return value


@p2p.remote
def echo(x):
    return x


@dataclasses.dataclass
class Point:
    x: int
    y: int

    def norm2(self) -> int:
        return self.x * self.x + self.y * self.y


@pytest.fixture
def gate(tmp_path):
    """A gate file path; opened (created) at teardown whatever happens, so no task stays blocked."""
    path = tmp_path / "gate"
    yield str(path)
    path.touch()


def test_get_of_list_keeps_input_order(cluster):
    # Later items finish first; the result is still in input order.
    refs = [sleep_then.remote(0.3 - 0.1 * i, i) for i in range(3)] + [p2p.put("put"), echo.remote("e")]
    assert p2p.get(refs, timeout=30) == [0, 1, 2, "put", "e"]
    assert p2p.get(tuple(refs[:2]), timeout=30) == [0, 1]
    assert p2p.get([], timeout=1) == []


def test_get_timeout(cluster, gate):
    ref = gated.remote(gate, value="late")
    start = time.monotonic()
    with pytest.raises(errors.GetTimeoutError) as info:
        p2p.get(ref, timeout=0.2)
    elapsed_s = time.monotonic() - start
    assert isinstance(info.value, TimeoutError)
    assert 0.2 <= elapsed_s < 2.0, elapsed_s
    # timeout=0 polls: not ready now, so it times out at once.
    with pytest.raises(errors.GetTimeoutError):
        p2p.get([ref], timeout=0)
    open(gate, "w").close()
    assert p2p.get(ref, timeout=30) == "late"


def test_put_get_round_trips(cluster):
    values = [
        np.arange(1000, dtype=np.float64).reshape(10, 100),
        {"a": [1, 2, {"b": (3, 4)}], "c": None, 5: b"bytes"},
        Point(3, 4),
        "text",
        12345678901234567890,
    ]
    for value in values:
        ref = p2p.put(value)
        got = p2p.get(ref, timeout=10)
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and np.array_equal(got, value)
        else:
            assert got == value
        # And through a worker and back.
        back = p2p.get(echo.remote(ref), timeout=30)
        if isinstance(value, np.ndarray):
            assert np.array_equal(back, value)
        else:
            assert back == value
    assert p2p.get(echo.remote(Point(1, 2)), timeout=30).norm2() == 5


def test_wait_returns_ready_and_not_ready_in_input_order(cluster, gate):
    slow = gated.remote(gate, value="slow")
    fast = [echo.remote(i) for i in range(3)]
    refs = [fast[0], slow, fast[1], fast[2]]
    ready, not_ready = p2p.wait(refs, num_returns=3, timeout=30)
    assert ready == [fast[0], fast[1], fast[2]]
    assert not_ready == [slow]

    # num_returns=1 returns exactly one ready ref, the rest are "not ready" (in input order).
    ready, not_ready = p2p.wait(refs, num_returns=1, timeout=30)
    assert len(ready) == 1 and len(not_ready) == 3
    assert ready[0] in fast
    assert [r for r in refs if r != ready[0]] == not_ready

    # Asking for all four honours the timeout.
    start = time.monotonic()
    ready, not_ready = p2p.wait(refs, num_returns=4, timeout=0.3)
    elapsed_s = time.monotonic() - start
    assert 0.3 <= elapsed_s < 2.0, elapsed_s
    assert ready == fast and not_ready == [slow]

    open(gate, "w").close()
    ready, not_ready = p2p.wait(refs, num_returns=4, timeout=30)
    assert ready == refs and not_ready == []


@pytest.mark.parametrize("same_function", [False, True], ids=["other_function", "same_function"])
def test_cancel_queued_task_never_runs(cluster, gate, tmp_path, same_function):
    """With both CPUs busy, a new task queues. Cancelled there, it must never run. With the blockers'
    own function it shares their scheduling key, so it may already sit in a busy worker's queue."""
    started = [str(tmp_path / f"started{i}") for i in range(2)]
    blockers = [gated.remote(gate, started[i], i) for i in range(2)]
    wait_until(lambda: all(os.path.exists(s) for s in started), 20, what="both CPUs to be busy")
    marker = tmp_path / "queued-task-ran"
    queued = gated.remote(gate, str(marker), "q") if same_function else touch.remote(str(marker))
    p2p.cancel(queued)
    with pytest.raises(errors.TaskCancelledError):
        p2p.get(queued, timeout=10)
    open(gate, "w").close()
    assert p2p.get(blockers, timeout=30) == [0, 1]
    # Prove the queue has drained past where the cancelled task would have run.
    after = tmp_path / "later-task-ran"
    assert p2p.get([touch.remote(str(after)) for _ in range(2)], timeout=30) == ["ran", "ran"]
    assert p2p.get([gated.remote(gate, None, i) for i in range(2)], timeout=30) == [0, 1]
    assert not marker.exists(), "a cancelled queued task ran anyway"


def test_cancel_running_task_interrupts_it(cluster, tmp_path):
    started = tmp_path / "started"
    never = str(tmp_path / "never-opened")
    ref = gated.remote(never, str(started), limit_s=30)
    wait_until(started.exists, 20, what="the task to start")
    start = time.monotonic()
    p2p.cancel(ref)
    with pytest.raises(errors.TaskCancelledError):
        p2p.get(ref, timeout=10)
    assert time.monotonic() - start < 5
    # The worker that was interrupted survives and keeps serving tasks.
    pid = int(started.read_text())
    assert alive([pid]) == [pid]
    assert p2p.get([echo.remote(i) for i in range(4)], timeout=30) == [0, 1, 2, 3]


def test_cancel_force_kills_the_worker(cluster, tmp_path):
    started = tmp_path / "started"
    never = str(tmp_path / "never-opened")
    ref = gated.remote(never, str(started), limit_s=30)
    wait_until(started.exists, 20, what="the task to start")
    pid = int(started.read_text())
    p2p.cancel(ref, force=True)
    with pytest.raises(errors.TaskCancelledError):
        p2p.get(ref, timeout=10)
    wait_until(lambda: not alive([pid]), 10, what=f"worker {pid} to be killed")
    # The cluster replaces the worker.
    assert p2p.get([echo.remote(i) for i in range(4)], timeout=30) == [0, 1, 2, 3]


def test_cancel_of_finished_task_is_harmless(cluster):
    ref = echo.remote("done")
    assert p2p.get(ref, timeout=30) == "done"
    p2p.cancel(ref)
    assert p2p.get(ref, timeout=5) == "done"


@p2p.remote
def inc(x):
    return x + 1


def test_task_depending_on_cancelled_task_fails_with_cancelled(cluster, gate, tmp_path):
    started = [str(tmp_path / f"started{i}") for i in range(2)]
    blockers = [gated.remote(gate, started[i], i) for i in range(2)]
    wait_until(lambda: all(os.path.exists(s) for s in started), 20, what="both CPUs to be busy")
    queued = echo.remote(1)
    dependent = inc.remote(queued)
    p2p.cancel(queued)
    open(gate, "w").close()
    with pytest.raises(errors.TaskCancelledError):
        p2p.get(dependent, timeout=30)
    assert p2p.get(blockers, timeout=30) == [0, 1]


@p2p.remote
def interruptible_child(gate: str, started: str, interrupted: str):
    open(started, "w").close()
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
    except BaseException:
        open(interrupted, "w").close()
        raise
    return "child finished"


@p2p.remote
def parent_of(gate: str, started: str, interrupted: str):
    return p2p.get(interruptible_child.remote(gate, started, interrupted))


def test_cancel_is_recursive_by_default(cluster, gate, tmp_path):
    started, interrupted = tmp_path / "child-started", tmp_path / "child-interrupted"
    ref = parent_of.remote(gate, str(started), str(interrupted))
    wait_until(started.exists, 20, what="the child task to start")
    p2p.cancel(ref)
    with pytest.raises(errors.TaskCancelledError):
        p2p.get(ref, timeout=10)
    wait_until(interrupted.exists, 3, what="the child task to be cancelled with its parent")

"""Ray's documented semantics that Ray users' code depends on, each stated as Ray's docs state it.

- Actor task order: "tasks from the same submitter are executed in the order they were submitted", even
  when their arguments are refs that resolve at different times, and after retries across restarts.
- `get` of a list raises the first error known at once; it does not wait for the other objects.
- `wait` without a timeout returns only when `num_returns` refs are ready.
- Calls made through a handle passed into tasks may overtake the actor's constructor: they wait for it.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

import p2pcompute as p2p
from p2pcompute import errors
from p2pcompute.runtime.objects import INLINE, ObjectTable

from itest_util import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@p2p.remote
def after(value, delay_s):
    time.sleep(delay_s)
    return value


@p2p.remote
class Recorder:
    def __init__(self):
        self.seen = []

    def record(self, i, _dep=None):
        self.seen.append(i)
        return i

    def seen_order(self):
        return list(self.seen)

    def pid(self):
        return os.getpid()


def test_calls_run_in_submission_order_when_arguments_resolve_out_of_order(cluster):
    rng = random.Random(7)
    rec = Recorder.remote()
    n = 60
    # Each call waits on a task of random length: arguments resolve in a shuffled order.
    refs = [rec.record.remote(i, after.remote(i, rng.random() * 0.09)) for i in range(n)]
    assert p2p.get(refs, timeout=60) == list(range(n))
    assert p2p.get(rec.seen_order.remote(), timeout=30) == list(range(n))


def test_a_failed_argument_does_not_hold_back_later_calls(cluster):
    @p2p.remote
    def fails():
        raise KeyError("no such row")

    rec = Recorder.remote()
    first = rec.record.remote(0, after.remote(0, 0.3))
    broken = rec.record.remote(1, fails.remote())
    last = rec.record.remote(2)
    assert p2p.get([first, last], timeout=30) == [0, 2]
    with pytest.raises(KeyError):
        p2p.get(broken, timeout=30)
    assert p2p.get(rec.seen_order.remote(), timeout=30) == [0, 2]


def test_cancelling_a_call_waiting_on_its_arguments_lets_later_calls_go(cluster):
    rec = Recorder.remote()
    slow_dep = after.remote(0, 30)
    waiting = rec.record.remote(0, slow_dep)
    later = rec.record.remote(1)
    p2p.cancel(waiting)
    with pytest.raises(errors.TaskCancelledError):
        p2p.get(waiting, timeout=20)
    assert p2p.get(later, timeout=20) == 1
    p2p.cancel(slow_dep, force=True)


@p2p.remote
class Journal:
    """Appends every executed call to a file, so the order survives the actor's process being killed."""

    def __init__(self, path):
        self.path = path

    def step(self, i, _dep=None):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()} {i}\n")
        time.sleep(0.01)
        return i

    def pid(self):
        return os.getpid()


def test_retried_calls_keep_the_callers_order_after_a_sigkill(cluster, tmp_path):
    path = str(tmp_path / "journal.txt")
    journal = Journal.options(max_restarts=-1, max_task_retries=-1).remote(path)
    pid = p2p.get(journal.pid.remote(), timeout=30)
    refs = [journal.step.remote(i) for i in range(80)]
    wait_until(lambda: os.path.exists(path) and len(open(path).read().splitlines()) >= 10, 30,
               what="the actor to have run some calls")
    os.kill(pid, signal.SIGKILL)
    assert p2p.get(refs, timeout=60) == list(range(80))
    lines = [line.split() for line in open(path).read().splitlines()]
    pids = []
    for p, _ in lines:
        if p not in pids:
            pids.append(p)
    assert len(pids) == 2, "the actor restarted once"
    for incarnation in pids:
        ran = [int(i) for p, i in lines if p == incarnation]
        assert ran == sorted(ran), f"calls ran out of order in process {incarnation}: {ran}"
    # Every call ran, and the restarted process picked up where the dead one stopped (at most re-running
    # the call that was in flight).
    second = [int(i) for p, i in lines if p == pids[1]]
    assert second[-1] == 79
    first = [int(i) for p, i in lines if p == pids[0]]
    assert second[0] <= first[-1] + 1


def test_get_of_a_list_raises_the_first_error_without_waiting_for_the_rest(cluster):
    @p2p.remote
    def fails():
        raise ValueError("bad input row 3")

    slow = after.remote("late", 60)
    start = time.monotonic()
    with pytest.raises(ValueError, match="bad input row 3"):
        p2p.get([slow, fails.remote()], timeout=50)
    assert time.monotonic() - start < 30, "get waited for the slow task before raising"
    p2p.cancel(slow, force=True)


def test_get_of_a_list_with_a_dead_actor_call_fails_fast(cluster):
    rec = Recorder.remote()
    p2p.get(rec.pid.remote(), timeout=30)
    slow = after.remote("late", 60)
    p2p.kill(rec)
    start = time.monotonic()
    with pytest.raises(errors.ActorDiedError):
        p2p.get([slow, rec.record.remote(1)], timeout=50)
    assert time.monotonic() - start < 30
    p2p.cancel(slow, force=True)


def test_wait_without_timeout_returns_only_with_a_ready_ref():
    # A waiter woken by an object that is dropped (or reset for a retry) after it counted must wait on.
    table = ObjectTable()
    result = []
    waiter = threading.Thread(target=lambda: result.append(table.wait_ready(["a"], 1, None, lambda ids: None)))
    waiter.start()
    wait_until(lambda: "a" in table.values and table.values["a"].waiters, 5, what="the waiter to register")
    table.drop("a")
    waiter.join(0.3)
    assert waiter.is_alive() and not result, "wait returned with no ready ref after a wake-up"
    table.resolve("a", INLINE, data=b"x")
    waiter.join(5)
    assert result == [[True]]


def test_fail_fast_wait_returns_on_the_first_error_only_when_asked():
    from p2pcompute.runtime.objects import ERROR
    table = ObjectTable()
    table.resolve("b", ERROR, error=b"err")
    assert table.wait_ready(["a", "b"], 2, time.monotonic() + 0.05, lambda ids: None, fail_fast=True) == [False, True]
    assert table.wait_ready(["a", "b"], 2, time.monotonic() + 0.05, lambda ids: None) == [False, True]


@p2p.remote(max_concurrency=4)
class SlowStart:
    def __init__(self, delay_s):
        time.sleep(delay_s)

    def ping(self, x):
        return x


@p2p.remote
def ping_through(handle, x):
    return p2p.get(handle.ping.remote(x), timeout=60)


def test_calls_through_handles_in_tasks_wait_for_the_constructor(cluster):
    # Tasks call the actor through handles passed as arguments while its constructor still runs: the calls
    # must wait for it, never fail with "not running here". Several rounds, fresh actors each time.
    for round_ in range(6):
        actor = SlowStart.remote(0.2 if round_ % 2 else 0.0)
        refs = [ping_through.remote(actor, i) for i in range(20)]
        assert p2p.get(refs, timeout=60) == list(range(20))


@p2p.remote
class Named:
    def hello(self):
        return "hello"


def test_get_actor_fails_right_after_kill(cluster):
    handle = Named.options(name="killed-right-away").remote()
    assert p2p.get(handle.hello.remote(), timeout=30) == "hello"
    p2p.kill(handle)
    with pytest.raises(ValueError, match="killed-right-away"):
        p2p.get_actor("killed-right-away")


def test_a_named_actor_goes_with_its_last_handle(cluster):
    handle = Named.options(name="goes-with-handle").remote()
    pid_holder = p2p.get(handle.hello.remote(), timeout=30)
    assert pid_holder == "hello"
    assert p2p.get(p2p.get_actor("goes-with-handle").hello.remote(), timeout=30) == "hello"
    del handle
    import gc
    gc.collect()

    def name_free():
        try:
            p2p.get_actor("goes-with-handle")
            return False
        except ValueError:
            return True

    wait_until(name_free, 30, what="the name to be released once no handle is left")
    # ... and the name can be claimed again.
    again = Named.options(name="goes-with-handle").remote()
    assert p2p.get(again.hello.remote(), timeout=30) == "hello"


@p2p.remote
def get_nested_and_count_lent_cpus(refs):
    import p2pcompute.api as api
    values = p2p.get(refs)
    return sum(values), api._runtime().cpu_lent


def test_a_task_getting_objects_already_there_keeps_its_cpu(cluster):
    # The objects exist (put by the driver) before the task asks: fetching them takes a round trip, not a
    # wait worth lending the CPU for.
    refs = [p2p.put(i) for i in range(5)]
    p2p.get(refs)
    total, lent_before = p2p.get(get_nested_and_count_lent_cpus.remote(refs), timeout=30)
    assert total == 10
    total, lent_after = p2p.get(get_nested_and_count_lent_cpus.remote(refs), timeout=30)
    assert lent_after == lent_before, "a get of objects that were ready lent the CPU"


@p2p.remote
def held_until(gate: str, value):
    """Holds its CPU until the file `gate` exists (bounded), then returns `value`."""
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


@p2p.remote
def get_slow_and_count_lent_cpus(ref_list, started: str):
    import p2pcompute.api as api
    before = api._runtime().cpu_lent
    open(started, "w").close()
    p2p.get(ref_list[0])
    return api._runtime().cpu_lent - before


def test_a_task_blocked_on_a_slow_object_lends_its_cpu(cluster, tmp_path):
    gate, started = tmp_path / "gate", tmp_path / "started"
    slow = held_until.remote(str(gate), 1)
    blocked = get_slow_and_count_lent_cpus.remote([slow], str(started))
    try:
        # Two CPUs, each held by one of the two tasks: one comes back only if the blocked task lends its own.
        wait_until(lambda: started.exists() and p2p.available_resources().get("CPU", 0) >= 1, 30,
                   what="the task blocked in get to lend its CPU")
    finally:
        gate.touch()
    assert p2p.get(blocked, timeout=30) == 1


def test_awaiting_many_refs_uses_no_thread_per_await(cluster):
    import asyncio

    @p2p.remote
    def slowly(i):
        time.sleep(0.2)
        return i

    async def main():
        refs = [slowly.remote(i) for i in range(60)]
        pending = [asyncio.ensure_future(asyncio.wrap_future(r.future())) for r in refs]
        await asyncio.sleep(0.05)
        threads_while_waiting = threading.active_count()
        # A future cancelled by its user while its value is on its way: no error anywhere.
        pending[0].cancel()
        values = await asyncio.gather(*pending[1:])
        return threads_while_waiting, values, await refs[0]

    before = threading.active_count()
    threads, values, first = asyncio.run(main())
    assert values == list(range(1, 60)) and first == 0
    assert threads <= before + 2, f"{threads - before} threads for 60 pending futures"


@p2p.remote
def kill_it(handle):
    p2p.kill(handle)
    return True


def test_kill_from_a_process_that_never_called_the_actor_reaches_its_owner(cluster):
    rec = Recorder.remote()
    p2p.get(rec.pid.remote(), timeout=30)
    assert p2p.get(kill_it.remote(rec), timeout=30)

    def dead():
        try:
            p2p.get(rec.pid.remote(), timeout=10)
            return False
        except errors.ActorDiedError:
            return True

    wait_until(dead, 30, what="the actor killed from a task to be dead")


@p2p.remote(max_concurrency=4)
class Box:
    """A threaded actor that keeps refs it was sent in its state."""

    def __init__(self):
        self.box = {}
        self.cv = threading.Condition()

    def deliver(self, i, holder):
        with self.cv:
            self.box[i] = holder
            self.cv.notify_all()

    def consume(self, i):
        with self.cv:
            while i not in self.box:
                self.cv.wait()
            (ref,) = self.box.pop(i)
        return float(p2p.get(ref)[-1])


@p2p.remote
class Sender:
    def send(self, box, i):
        import numpy as np
        ref = p2p.put(np.arange(200_000, dtype=np.float64))
        p2p.get(box.deliver.remote(i, [ref]))
        return i  # our ref goes with this frame: the box's copy of it must keep the object alive


def test_a_ref_kept_by_a_threaded_actor_outlives_its_sender_dropping_it(cluster):
    sender, box = Sender.remote(), Box.remote()
    for i in range(5):
        assert p2p.get(sender.send.remote(box, i), timeout=30) == i
        assert p2p.get(box.consume.remote(i), timeout=30) == 199_999.0


def test_a_task_whose_function_is_too_big_to_send_fails_with_the_reason(cluster):
    big = b"x" * (70 * 1024 * 1024)  # captured by the function: more than one message can carry

    @p2p.remote
    def uses_big():
        return len(big)

    start = time.monotonic()
    with pytest.raises(ValueError, match="too big|too large|object store"):
        p2p.get(uses_big.remote(), timeout=60)
    assert time.monotonic() - start < 30
    # The worker that push was meant for never got the job's import path it carried: later work there, of a
    # class found only through that path (this test module), must still run.
    pingers = [SlowStart.remote(0.0) for _ in range(4)]
    assert p2p.get([p.ping.remote(i) for i, p in enumerate(pingers)], timeout=60) == [0, 1, 2, 3]

"""The object directory as the client's user threads use it: waiting for values, and reading them.

The directory itself (`ownership/directory.py`) belongs to the owner core; what is here runs on user threads
and may block, with deadlines on the real clock.
"""

from __future__ import annotations

import time

from p2pcompute import serialization
from p2pcompute.errors import GetTimeoutError, ObjectLostError
from p2pcompute.ownership import directory
from p2pcompute.ownership.directory import ERROR, INLINE, PENDING, STORED, ObjectValue, _Waiter  # noqa: F401


class ObjectTable(directory.ObjectTable):
    """The directory, with the user threads' side of the hand-off."""

    # How a user thread waits for a waiter's lock: `block(lock, timeout_s) -> released?`. A driver's runtime
    # sets its own, which runs the loop on the waiting thread (`runtime/driving.py`, `LoopDriving._block`).
    block = None

    def when_ready(self, object_id: str, callback, on_missing) -> None:
        """Call `callback()` once the object is not PENDING (now, if it is already). It runs on the thread
        that resolves the object, under the directory's lock: it must only hand the news on. A wake-up for
        an object dropped or reset meanwhile calls it too; the caller checks the state again."""
        with self.lock:
            v = self.values.get(object_id)
            if v is not None and v.state != PENDING:
                ready = True
            else:
                ready = False
                if v is None:
                    v = self.values[object_id] = ObjectValue()
                waiter = _Waiter.__new__(_Waiter)
                waiter.lock = _Trigger(callback)
                waiter.need = 1
                waiter.fail_fast = False
                if v.waiters is None:
                    v.waiters = []
                v.waiters.append((waiter, 1))
        if ready:
            callback()
        else:
            on_missing([object_id])

    def wait_ready(self, object_ids: list[str], num: int, deadline: float | None,
                   on_missing, fail_fast: bool = False) -> list[bool]:
        """Block until at least `num` of the objects are not PENDING, or the deadline passes — or, with
        `fail_fast`, until any of them fails (`get` of a list raises the first error known, as Ray does).

        `on_missing(ids)` is called (once, outside the lock) for ids not known yet, so the I/O thread can ask
        their owners. Returns the ready flags in input order.

        The waiter counts down as objects resolve (the I/O thread decrements it), so waiting for n objects
        costs O(n) in all, not a rescan of the whole list on every arrival. A wake-up that does not satisfy
        the wait (an object reset for a retry, or dropped, after it counted) waits again: without a deadline
        this returns only once `num` objects are ready.
        """
        counts: dict[str, int] = {}
        for oid in object_ids:
            counts[oid] = counts.get(oid, 0) + 1
        asked = False
        while True:
            waiter = _Waiter()
            waiter.fail_fast = fail_fast
            with self.lock:
                ready = 0
                pending = []
                failed = False
                for oid, n in counts.items():
                    v = self.values.get(oid)
                    if v is not None and v.state != PENDING:
                        ready += n
                        failed = failed or v.state == ERROR
                        continue
                    pending.append(oid)
                    if v is None:
                        v = self.values[oid] = ObjectValue()
                    if v.waiters is None:
                        v.waiters = []
                    v.waiters.append((waiter, n))
                waiter.need = num - ready
                if waiter.need <= 0 or (fail_fast and failed):
                    self._unregister(counts, waiter)
                    return self._flags(object_ids)
            if not asked:
                asked = True
                on_missing(pending)  # borrowed objects we know nothing of yet: the I/O thread asks their owners
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            block = self.block
            if block is None:
                woke = waiter.lock.acquire(timeout=-1 if timeout is None else timeout)
            else:
                woke = block(waiter.lock, timeout)
            with self.lock:
                self._unregister(counts, waiter)
                flags = self._flags(object_ids)
                if not woke or sum(flags) >= num:
                    return flags
                if fail_fast and any(self.values[oid].state == ERROR
                                     for oid, f in zip(object_ids, flags) if f and oid in self.values):
                    return flags
            if deadline is not None and time.monotonic() >= deadline:
                return flags


def load_value(v: ObjectValue, object_id: str, read_stored):
    """Rebuild the Python value of a ready object (user thread)."""
    if v.state == INLINE:
        return serialization.deserialize(v.data, writable=True)
    if v.state == STORED:
        return serialization.deserialize(read_stored(object_id, v))
    if v.state == ERROR:
        raise serialization.error_from_bytes(v.error)
    raise ObjectLostError(f"object {object_id} is not ready")


def deadline_of(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    return time.monotonic() + max(0.0, timeout)


def timeout_error(object_ids: list[str], timeout: float) -> GetTimeoutError:
    shown = ", ".join(object_ids[:3]) + (" ..." if len(object_ids) > 3 else "")
    return GetTimeoutError(f"get timed out after {timeout} s; not ready: {shown}")


class _Trigger:
    """Stands in for a waiter's lock: releasing it calls back, once."""

    __slots__ = ("callback",)

    def __init__(self, callback):
        self.callback = callback

    def release(self) -> None:
        callback, self.callback = self.callback, None
        if callback is None:
            raise RuntimeError("released twice")  # what a lock says; the directory ignores it
        callback()

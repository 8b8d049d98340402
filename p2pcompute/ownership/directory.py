"""The object directory: the values a process knows — owned results and borrowed objects it asked about.

The I/O thread fills these in; user threads read them in `get` and `wait`. One lock guards the hand-off
(state changes and waiter lists), so a waiter can never register after the wake-up it needed.
"""

from __future__ import annotations

import threading
import time

from p2pcompute import serialization
from p2pcompute.errors import GetTimeoutError, ObjectLostError

PENDING = 0
INLINE = 1
STORED = 2
ERROR = 3


class ObjectValue:
    __slots__ = ("state", "data", "size", "locations", "error", "contained", "waiters", "remote_waiters",
                 "requested")

    def __init__(self):
        self.state = PENDING
        self.data: bytes | None = None     # inline blob
        self.size = 0
        self.locations: list = []          # [[peer_id, peer_addr, store_path], ...] for STORED
        self.error: bytes | None = None    # ["user"|"system", blob] packed
        self.contained: list = []          # refs inside the value: [[object_id, owner_addr], ...]
        self.waiters: list | None = None   # locks of user threads waiting on it
        self.remote_waiters: list | None = None  # addresses of borrowers that asked the owner
        self.requested = False             # borrower side: GetObject sent to the owner


class ObjectTable:
    def __init__(self):
        self.lock = threading.Lock()
        self.values: dict[str, ObjectValue] = {}

    def value(self, object_id: str) -> ObjectValue:
        v = self.values.get(object_id)
        if v is None:
            v = self.values[object_id] = ObjectValue()
        return v

    # ---- I/O thread ---------------------------------------------------------------------------------

    def resolve(self, object_id: str, state: int, *, data=None, size=0, locations=None, error=None,
                contained=None) -> ObjectValue:
        with self.lock:
            v = self.value(object_id)
            v.data = data
            v.size = size
            v.locations = locations or []
            v.error = error
            v.contained = contained or []
            v.state = state
            waiters, v.waiters = v.waiters, None
            if waiters:
                for waiter, n in waiters:
                    waiter.need -= n
                    if (waiter.need == 0 or (waiter.need < 0 and waiter.need + n > 0)
                            or (state == ERROR and waiter.fail_fast)):
                        _release(waiter.lock)
        return v

    def reset(self, object_id: str) -> None:
        """The value must be computed again (its task is being retried or rebuilt)."""
        with self.lock:
            v = self.values.get(object_id)
            if v is not None:
                v.state = PENDING
                v.data = None

    def drop(self, object_id: str) -> ObjectValue | None:
        with self.lock:
            v = self.values.pop(object_id, None)
            waiters = v.waiters if v is not None else None
            if waiters:
                for waiter, _n in waiters:
                    _release(waiter.lock)  # the waiter rechecks and finds it gone
        return v

    # ---- user threads -------------------------------------------------------------------------------

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
            woke = waiter.lock.acquire(timeout=-1 if timeout is None else timeout)
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

    def _flags(self, object_ids: list[str]) -> list[bool]:
        values = self.values
        return [(v := values.get(oid)) is not None and v.state != PENDING for oid in object_ids]

    def _unregister(self, counts: dict, waiter: "_Waiter") -> None:
        for oid in counts:
            v = self.values.get(oid)
            if v is not None and v.waiters:
                v.waiters = [w for w in v.waiters if w[0] is not waiter] or None


class _Waiter:
    __slots__ = ("lock", "need", "fail_fast")

    def __init__(self):
        self.lock = threading.Lock()
        self.lock.acquire()
        self.need = 0
        self.fail_fast = False


def _release(lock) -> None:
    try:
        lock.release()
    except RuntimeError:
        pass  # already released by another object's completion; the waiter rechecks everything


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

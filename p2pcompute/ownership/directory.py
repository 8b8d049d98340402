"""The object directory: the values a process knows — owned results and borrowed objects it asked about.

The owner core fills these in (on the I/O thread); user threads read them in `get` and `wait`
(`runtime/objects.py` adds the waiting). One lock guards the hand-off (state changes and waiter lists), so a
waiter can never register after the wake-up it needed.
"""

from __future__ import annotations

import threading


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

    def ready_flags(self, object_ids: list[str]) -> list[bool]:
        """Which of the objects are ready now (not PENDING), in input order; no waiting."""
        return self._flags(object_ids)

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

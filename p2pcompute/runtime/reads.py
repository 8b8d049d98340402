"""Reading values on user threads: `get`, futures, and mapping or pulling stored objects.

Part of the client runtime (`ClientRuntime` inherits it). User threads wait on the object directory with a
deadline and read values themselves — mapping a store on this machine read-only (no copy), or asking the
local peer to pull a copy; a copy found gone is reported to the owner core, which rebuilds it or asks its
owner again, and the read is retried. A task blocked here lends its worker's CPU after a grace period.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeoutError

from p2pcompute import serialization
from p2pcompute.errors import GetTimeoutError, ObjectFreedError, ObjectLostError
from p2pcompute.object_ref import ObjectRef
from p2pcompute.ownership import messages as om
from p2pcompute.ownership.directory import ERROR, PENDING, STORED
from p2pcompute.ownership.store import LocalStore
from p2pcompute.runtime.objects import deadline_of, load_value, timeout_error

# Benchmarks and tests of the transfer path: never map another peer's store on this machine, pull a copy
# as if it were on another machine.
_FORCE_TRANSFERS = os.environ.get("P2P_FORCE_TRANSFERS") == "1"
_BLOCK_GRACE_S = 0.05  # a get shorter than this keeps the worker's CPU (see get_values)


class ValueReader:
    """Methods of `ClientRuntime` that run on user threads to read values (see the module's docstring)."""

    def read_stored(self, object_id: str, v, deadline: float | None = None) -> memoryview:
        return self.read_object(object_id, v.size, v.locations, self.addr if self.refs.is_owned(object_id)
                                else self._owner_addr(object_id), deadline)

    def _owner_addr(self, object_id: str) -> str:
        return self.refs.owner_of(object_id) or ""

    def read_object(self, object_id: str, size: int, locations: list, owner_addr: str,
                    deadline: float | None = None) -> memoryview:
        """Map a stored object: from a store on this machine if any holds it, else pull a copy into ours
        (through our peer, which shares one transfer among all local readers). Any thread but the I/O one.
        A pull waits for its transfer (at least 60 s), but never past the caller's `deadline`
        (`GetTimeoutError`)."""
        for _peer_id, _peer_addr, path in locations:
            if path == self.store.path or (os.path.isdir(path) and not _FORCE_TRANSFERS):
                try:
                    return self._store_at(path).read(object_id)
                except ObjectLostError:
                    continue
        if self.store.exists(object_id):
            return self.store.read(object_id)
        errors = []
        for peer_id, peer_addr, _path in locations:
            if peer_id == self.node_id:
                continue
            wait_s = max(60.0, size / 50e6)
            if deadline is not None:
                wait_s = min(wait_s, max(0.0, deadline - time.monotonic()))
            try:
                reply = self.peer_request(lambda rid: om.FetchObject(rid, object_id, size, peer_addr, owner_addr,
                                                                     self.addr), timeout_s=wait_s)
            except (TimeoutError, FutureTimeoutError):
                if deadline is not None and time.monotonic() >= deadline:
                    raise GetTimeoutError(f"get timed out while pulling object {object_id} from "
                                          f"{peer_addr}") from None
                raise
            if reply.error is None:
                return self.store.read(object_id)
            errors.append(reply.error)
        raise ObjectLostError(f"object {object_id}: no copy could be read ({'; '.join(errors) or 'none left'})")

    def _store_at(self, path: str) -> LocalStore:
        store = self._stores.get(path)
        if store is None:
            store = self._stores[path] = LocalStore(path)
        return store

    def future_of(self, ref: ObjectRef) -> Future:
        """A `concurrent.futures.Future` for the value. One thread per process reads the values of ready
        futures (a read can map a store or rebuild a lost copy); nothing waits per future."""
        fut: Future = Future()
        with self._lock_futures:
            if self._futures is None:
                self._futures = queue.SimpleQueue()
                threading.Thread(target=self._resolve_futures, daemon=True, name="p2p-futures").start()
        self._watch(ref, fut)
        return fut

    def _watch(self, ref: ObjectRef, fut: Future) -> None:
        futures = self._futures
        self.objects.when_ready(ref._id, lambda: futures.put((ref, fut)), self.request_fetch)

    def _resolve_futures(self) -> None:
        while True:
            ref, fut = self._futures.get()
            if fut.done():
                continue  # cancelled by its user meanwhile
            v = self.objects.values.get(ref._id)
            if v is None or v.state == PENDING:
                self._watch(ref, fut)  # woken by a reset or a drop: wait again
                continue
            try:
                value = self.get_values([ref], None)[0]
            except BaseException as exc:  # noqa: BLE001 - handed to the future
                outcome = (fut.set_exception, exc)
            else:
                outcome = (fut.set_result, value)
            try:
                outcome[0](outcome[1])
            except InvalidStateError:
                pass  # cancelled while the value was read

    # ---- get ----------------------------------------------------------------------------------------

    def get_values(self, refs: list[ObjectRef], timeout: float | None) -> list:
        ids = [r._id for r in refs]
        deadline = deadline_of(timeout)
        values = self.objects.values
        if not all((v := values.get(oid)) is not None and v.state != PENDING for oid in ids):
            # Fail fast: the first error known is raised without waiting for the other objects. An object
            # already on this machine, or a reply about to arrive, is ready within a few milliseconds: only a
            # longer wait lends this worker's CPU to other tasks (as Ray keeps it for objects already local).
            # Results of our own tasks still being computed are worth lending the CPU for at once.
            owned_pending = any(self.refs.is_owned(oid) and ((v := values.get(oid)) is None or v.state == PENDING)
                                for oid in ids)
            if owned_pending:
                # Lend at once: no point registering a waiter per object only to time out at once (a get of
                # 10,000 fresh results did that work twice).
                grace = time.monotonic()
                flags = self.objects.ready_flags(ids)
            else:
                grace = time.monotonic() + _BLOCK_GRACE_S
                flags = self.objects.wait_ready(ids, len(ids), grace if deadline is None else min(deadline, grace),
                                                self.request_fetch, fail_fast=True)
            if not all(flags) and not any(f and values[oid].state == ERROR for oid, f in zip(ids, flags)
                                          if oid in values) and (deadline is None or deadline > grace):
                blocked = self.on_blocked()
                self.cpu_lent += blocked
                try:
                    flags = self.objects.wait_ready(ids, len(ids), deadline, self.request_fetch, fail_fast=True)
                finally:
                    if blocked:
                        self.on_unblocked()
            if not all(flags):
                for oid, flag in zip(ids, flags):
                    v = values.get(oid)
                    if flag and v is not None and v.state == ERROR:
                        raise serialization.error_from_bytes(v.error)
                raise timeout_error([i for i, f in zip(ids, flags) if not f], timeout)
        out = []
        for oid in ids:
            out.append(self._load(oid, deadline, timeout))
        return out

    def _load(self, oid: str, deadline, timeout):
        """One value; a stored object whose copies vanished is rebuilt (or re-asked of its owner) and read
        again, a few times at most."""
        for _attempt in range(5):
            v = self.objects.values.get(oid)
            if v is None:
                raise ObjectFreedError(f"object {oid} was freed while being read")
            try:
                return load_value(v, oid, lambda object_id, value: self.read_stored(object_id, value, deadline))
            except ObjectLostError:
                if v.state == STORED:
                    self.call(lambda: self._lost_on_read(oid), timeout_s=30)
                elif v.state != PENDING:
                    raise
                # PENDING: its copies were found lost meanwhile (a holder died) and it is being rebuilt, or
                # asked of its owner again: wait for it as for any value.
            flags = self.objects.wait_ready([oid], 1, deadline, self.request_fetch)
            if not flags[0]:
                raise timeout_error([oid], timeout)
        raise ObjectLostError(f"object {oid} could not be read after several attempts to rebuild it")

    def _lost_on_read(self, oid: str) -> None:
        self._apply(self.core.copies_unreadable, oid)

    def request_fetch(self, ids: list[str]) -> None:
        self.ops.append(("fetch", ids))
        is_owned = self.refs.is_owned
        if not all(is_owned(oid) for oid in ids):
            self.kick()
        # else nothing to ask anyone now: the next pass (or tick) checks that none of them was freed already

    # Workers override these to lend their CPU back while they wait.
    def on_blocked(self) -> bool:
        return False

    def on_unblocked(self) -> None:
        pass

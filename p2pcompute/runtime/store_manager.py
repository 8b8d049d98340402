"""The peer's accounting of its machine's object store, and the spilling policy.

Clients write objects straight into the store directory and tell the peer (`ObjectSealed`); owners tell it
when to free them (`FreeObjects`). When the bytes in memory pass `spill_threshold` of the capacity, the
oldest objects move to the spill directory on disk until usage is back under `spill_target`. A spilled
object is read in place (mapped from disk), so nothing waits for a restore. Objects are never evicted:
only spilled, and only freed when their owner says so.

Recycled files (see `p2pcompute.ownership.store`): freeing a large object moves its file into the store's
pool, where the next large write reuses its pages. Pooled files are not objects: `used` (StoreUsed) counts
live objects only, so a store still returns to its starting `used` once every ref is dropped; `summary()`
reports the pool apart as `pooled`. The pool is capped (`pool_max_bytes`, `pool_max_files`), drained before
anything is spilled when memory runs short, and emptied of files unused for `POOL_IDLE_S`.
"""

from __future__ import annotations

import logging

import time

from p2pcompute.ownership.store import POOL_IDLE_S, RECYCLE_MIN_BYTES, LocalStore

log = logging.getLogger("p2pcompute.store")


def default_capacity() -> int:
    """30% of RAM, as Ray does, but never more than the shared-memory filesystem can hold."""
    import os
    try:
        import psutil
        ram = psutil.virtual_memory().total
    except Exception:
        ram = 8 << 30
    capacity = int(ram * 0.3)
    try:
        st = os.statvfs("/dev/shm")
        capacity = min(capacity, int(st.f_blocks * st.f_frsize * 0.9))
    except OSError:
        pass
    return capacity


class StoreManager:
    def __init__(self, store: LocalStore, capacity: int, spill_threshold: float = 0.8, spill_target: float = 0.6,
                 max_spill_per_tick: int = 512 << 20, pool_max_bytes: int | None = None,
                 pool_max_files: int = 8):
        self.store = store
        self.capacity = capacity
        self.spill_threshold = spill_threshold
        self.spill_target = spill_target
        self.max_spill_per_tick = max_spill_per_tick
        self.in_memory: dict[str, int] = {}  # insertion order = age: the oldest spill first
        self.spilled: dict[str, int] = {}
        self.used = 0
        self.spilled_bytes = 0
        self.spills = 0
        # Enough for a few large objects in flight; never a large share of the store.
        self.pool_max_bytes = min(capacity // 8, 1 << 30) if pool_max_bytes is None else pool_max_bytes
        self.pool_max_files = pool_max_files
        self.pooled_bytes = 0  # as of the last look at the pool (writers take files without telling us)
        self._pool_checked = 0.0

    def sealed(self, object_id: str, size: int) -> None:
        if object_id in self.in_memory or object_id in self.spilled or size < 0:
            return
        if not self.store.exists(object_id):
            # Freed already: the owner's FreeObjects (sent once the ref was dropped) can overtake the writer's
            # ObjectSealed, which travels from another process. Counting it now would count it for ever.
            return
        if self.store.is_spilled(object_id):  # written straight to disk because memory was full
            self.spilled[object_id] = size
            self.spilled_bytes += size
        else:
            self.in_memory[object_id] = size
            self.used += size

    def free(self, object_id: str) -> None:
        size = self.in_memory.get(object_id)
        if size is None and object_id not in self.spilled:
            # Not sealed yet: the owner's free can overtake the writer's ObjectSealed. The file is still worth
            # recycling (it was never counted, so there is nothing to uncount).
            size = self.store.size_in_memory(object_id)
        if size is not None and size >= RECYCLE_MIN_BYTES and self.pool_max_bytes > 0:
            self._recycle(object_id, size)
        else:
            self.on_tick()
        self.store.delete(object_id)
        size = self.in_memory.pop(object_id, None)
        if size is not None:
            self.used -= size
        size = self.spilled.pop(object_id, None)
        if size is not None:
            self.spilled_bytes -= size

    def on_tick(self) -> None:
        """Drop pooled files unused for POOL_IDLE_S (looked at every POOL_IDLE_S / 4 at most)."""
        now = time.monotonic()
        if now - self._pool_checked > POOL_IDLE_S / 4:
            self._pool_checked = now
            self.store.drain_pool(keep_bytes=self.pool_max_bytes, idle_s=POOL_IDLE_S)
            self.pooled_bytes = sum(s for _n, s, _t in self.store.pooled())

    def _recycle(self, object_id: str, size: int) -> None:
        pooled = self.store.pooled()
        total = sum(s for _n, s, _t in pooled)
        if len(pooled) >= self.pool_max_files or total + size > self.pool_max_bytes:
            # Make room by dropping the oldest pooled files, if that is enough; else just unlink this one.
            if size > self.pool_max_bytes:
                self.pooled_bytes = total
                return
            keep = self.pool_max_bytes - size
            while pooled and (len(pooled) >= self.pool_max_files or total > keep):
                name, s, _t = pooled.pop(0)
                if self.store.drain_one(name):
                    total -= s
        if self.used + total + size > self.capacity * self.spill_threshold:
            self.pooled_bytes = total
            return  # memory is short: give the pages back
        moved = self.store.recycle(object_id)
        self.pooled_bytes = total + moved

    def maybe_spill(self) -> int:
        """Spill the oldest objects while over the threshold; returns the bytes spilled this call. Drains
        the pool first (pooled pages are spare), and drops pooled files left unused for POOL_IDLE_S."""
        self.on_tick()
        if self.used + self.pooled_bytes > self.capacity * self.spill_threshold and self.pooled_bytes:
            self.store.drain_pool()
            self.pooled_bytes = 0
        if self.store.spill_dir is None or self.used <= self.capacity * self.spill_threshold:
            return 0
        moved = 0
        target = self.capacity * self.spill_target
        for object_id in list(self.in_memory):
            if self.used <= target or moved >= self.max_spill_per_tick:
                break
            size = self.in_memory[object_id]
            try:
                ok = self.store.spill(object_id)
            except OSError as exc:
                log.error("cannot spill %s to %s: %s", object_id, self.store.spill_dir, exc)
                return moved
            del self.in_memory[object_id]
            self.used -= size
            if ok:
                self.spilled[object_id] = size
                self.spilled_bytes += size
                moved += size
                self.spills += 1
        if moved:
            log.info("spilled %.1f MiB to %s (memory store now %.1f of %.1f MiB)", moved / 2**20,
                     self.store.spill_dir, self.used / 2**20, self.capacity / 2**20)
        return moved

    def summary(self) -> dict:
        return {"used": self.used, "capacity": self.capacity, "spilled": self.spilled_bytes,
                "objects": len(self.in_memory), "spilled_objects": len(self.spilled), "pooled": self.pooled_bytes}

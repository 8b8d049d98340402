"""A queue of rumours for piggybacking: each sent a bounded number of times, fewest-sent and newest first.

SWIM disseminates by infection: every peer that accepts a change passes it on a few times (about
log N), riding on messages it sends anyway. The queue decides which few rumours fit into the next message.
"""

from __future__ import annotations

__all__ = ["RumourQueue"]


class RumourQueue:
    """Rumours keyed by peer id (a newer one replaces the older), each sent at most `limit` times.

    Bucket b lists the records already sent b times, oldest first, so taking the fewest-sent and then newest
    pops from the ends of the low buckets: O(records taken), however long the queue. A record is live while
    `_live` maps its key (the record's first field, a peer id) to that very object; a replaced one stays in
    its bucket until popped or compacted away. Nothing is allocated per record: the simulator runs a thousand
    of these queues, and the garbage collector's work grows with every container created.
    """

    __slots__ = ("_buckets", "_live", "_size")

    def __init__(self) -> None:
        self._buckets: list[list[tuple]] = [[]]
        self._live: dict[str, tuple] = {}
        self._size = 0  # records in all buckets, live or replaced

    def __len__(self) -> int:
        return len(self._live)

    def put(self, key: str, item: tuple) -> None:
        if self._live.get(key) is item:
            return
        self._live[key] = item
        self._buckets[0].append(item)
        self._size += 1
        if self._size > 64 + 2 * len(self._live):
            self._compact()

    def discard(self, key: str) -> None:
        self._live.pop(key, None)

    def take(self, k: int, limit: int) -> tuple:
        if not self._live:
            return ()
        buckets, live = self._buckets, self._live
        out: list[tuple] = []
        moved: list[tuple[tuple, int]] = []
        for b, bucket in enumerate(buckets):
            if not bucket:
                continue
            if b >= limit:  # the cluster shrank, and with it the retransmit limit
                for item in bucket:
                    if live.get(item[0]) is item:
                        del live[item[0]]
                self._size -= len(bucket)
                bucket.clear()
                continue
            while bucket and len(out) < k:
                item = bucket.pop()  # the newest of the fewest-sent
                if live.get(item[0]) is item and item not in out:
                    out.append(item)
                    moved.append((item, b + 1))
                else:
                    self._size -= 1
            if len(out) == k:
                break
        # Re-file only after picking, so no record goes twice into one message; oldest first keeps the order.
        for item, b in reversed(moved):
            if b >= limit:
                del live[item[0]]
                self._size -= 1
            else:
                if b == len(buckets):
                    buckets.append([])
                buckets[b].append(item)
        return tuple(out)

    def _compact(self) -> None:
        live = self._live
        self._buckets = [[item for item in bucket if live.get(item[0]) is item] for bucket in self._buckets]
        self._size = sum(len(bucket) for bucket in self._buckets)

"""The replica side of read-cache subscriptions.

Theory of operation. A subscriber (a `TableClient`) asks any replica for the committed changes from an index
on. The replica keeps the changes of recently applied entries in a bounded buffer and pushes, after each
batch it applies, everything each subscriber has not seen yet; a subscriber further behind than the buffer
gets a whole snapshot of the records instead. Committed changes are final and log indexes are global, so a
subscriber may move between replicas (a lagging replica just pushes nothing new yet).

Pushes are best effort. The subscriber notices a lost one as a gap (`first_index` beyond what it holds) and
re-subscribes from where it is; it renews before `ttl` runs out, so a subscriber that went away costs the
replica nothing after the ttl. Keepalives tell an idle subscriber its cache is still current.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

from p2pcompute.net.effects import Send
from p2pcompute.table.messages import TableSnapshot, TableUpdate


@dataclass
class _Subscriber:
    client_id: str
    next_index: int  # the first index this subscriber has not been sent
    expires_ns: int


class Subscriptions:
    def __init__(self, replica_id: str, *, buffer_entries: int) -> None:
        self.replica_id = replica_id
        self.buffer_entries = buffer_entries
        # (index, changes) of recently applied entries that changed something, in index order. Every change
        # after `base_index` is in here; older ones are only in the state itself.
        self.events: list[tuple[int, list]] = []
        self.base_index = 0
        self.subscribers: dict[str, _Subscriber] = {}  # by reply address

    def reset(self, index: int) -> None:
        """The state was replaced wholesale at `index` (a snapshot): no change before it is known."""
        self.events.clear()
        self.base_index = index

    def record(self, index: int, changes: list) -> None:
        if changes:
            self.events.append((index, changes))
        if len(self.events) > 2 * self.buffer_entries:  # trim in bulk: amortised O(1) per entry
            drop = len(self.events) - self.buffer_entries
            self.base_index = self.events[drop - 1][0]
            del self.events[:drop]

    def subscribe(self, now_ns: int, addr: str, client_id: str, from_index: int, ttl_ns: int) -> None:
        # The subscriber knows best where it is: a gap or a move between replicas rewinds its cursor.
        self.subscribers[addr] = _Subscriber(client_id, max(from_index, 1), now_ns + ttl_ns)

    def push(self, now_ns: int, applied_index: int, records: Callable[[], dict], header: dict,
             keepalive: bool, only: str | None = None) -> list[Send]:
        """Sends bringing every subscriber (or just `only`) up to `applied_index`; with `keepalive`, idle
        ones get an empty update too. `header` holds the replicas / leader / fresh fields of the messages."""
        out: list[Send] = []
        for addr, sub in list(self.subscribers.items()):
            if only is not None and addr != only:
                continue
            if sub.expires_ns <= now_ns:
                del self.subscribers[addr]
            elif sub.next_index <= self.base_index and sub.next_index <= applied_index:
                out.append(Send(addr, TableSnapshot(replica_id=self.replica_id, last_index=applied_index,
                                                    records=records(), **header)))
                sub.next_index = applied_index + 1
            elif sub.next_index <= applied_index or keepalive:
                first = min(sub.next_index, applied_index + 1)
                start = bisect.bisect_left(self.events, first, key=lambda event: event[0])
                out.append(Send(addr, TableUpdate(replica_id=self.replica_id, first_index=first,
                                                  last_index=applied_index, events=self.events[start:],
                                                  **header)))
                sub.next_index = max(sub.next_index, applied_index + 1)
        return out

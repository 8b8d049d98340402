"""Which replica gets a request: power of two choices over ongoing requests, within each replica's limit.

Theory of operation. A router knows, for every replica of a deployment, how many of its own requests are in
flight there (and what the replica last said about its total). To place a request it samples two replicas
that still have room (`ongoing < max_ongoing_requests`) and takes the less loaded one — the same rule the
lease core uses to spill work between peers: nearly as good as asking everyone, at the cost of two looks.
When no replica has room, the request waits in the router's queue, and once that queue holds
`max_queued_requests` the next request is refused (HTTP 503), so a slow deployment pushes back on clients
instead of growing an unbounded backlog.

Pure: no clocks, no I/O; randomness only through the injected `random.Random`.
"""

from __future__ import annotations

import enum
import random
from typing import Iterable, Mapping


class Admission(enum.Enum):
    ASSIGN = "assign"   # a replica has room: send it now
    QUEUE = "queue"     # every replica is full: wait for a slot
    REJECT = "reject"   # every replica is full and the queue is at its limit: refuse (503)


class ReplicaChooser:
    """Picks a replica by power of two choices among those below `capacity` ongoing requests."""

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()

    def choose(self, loads: Mapping[str, int], capacity: int, exclude: Iterable[str] = ()) -> str | None:
        """The replica to send the next request to, or None when every (non-excluded) replica is full."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity!r}")
        skip = set(exclude)
        room = [r for r, n in loads.items() if n < capacity and r not in skip]
        if not room:
            return None
        if len(room) == 1:
            return room[0]
        a, b = self._rng.sample(room, 2)
        # Ties go to the first sample, which is itself random: equal replicas share the load evenly.
        return a if loads[a] <= loads[b] else b


def admit(has_room: bool, queued: int, max_queued_requests: int) -> Admission:
    """What to do with a new request. `max_queued_requests < 0` means the queue is unbounded (Ray's -1)."""
    if has_room and queued == 0:
        return Admission.ASSIGN
    if max_queued_requests >= 0 and queued >= max_queued_requests:
        return Admission.REJECT
    return Admission.QUEUE

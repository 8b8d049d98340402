"""The discrete-event engine: a virtual clock, one heap of events, and the one seeded RNG.

Theory of operation
-------------------
Time is an integer count of nanoseconds that only the engine advances, jumping from one event to the next;
nothing ever reads the wall clock. An event is `(at_ns, seq, fn, a, b)`: at `at_ns` the engine calls
`fn(a, b)`. `seq` grows by one per scheduled event, so events at the same instant run in the order they were
scheduled and the heap never compares anything past it.

All randomness comes from `Engine.rng`, seeded from the run's seed. Components take their own generator
from it with `derive_rng()` at construction, in a fixed order, so that adding draws in one component does
not shift every other component's draws (and so a change of workload leaves the fault schedule alone).
Nothing in the simulator iterates over a `set` of strings where order matters (string hashing is salted per
process), so the same seed and options replay the same run in any process.

`EventLog` folds what happened — event times, message types, endpoints, faults — into a running blake2b
hash. Two runs agree on the hash exactly when they did the same things at the same times.

Cancelling: `cancel(seq)` marks a scheduled event dead (the hypothesis state machine drops, duplicates and
delays individual messages this way); the loop skips it when it comes up.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from array import array
from typing import Callable

_FLUSH_EVERY = 1 << 15


class EventLog:
    """A running blake2b over integer event records, buffered in an array for speed."""

    __slots__ = ("_hash", "_buf", "count")

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self._buf = array("q")
        self.count = 0

    def add(self, a: int, b: int, c: int, d: int) -> None:
        buf = self._buf
        buf.extend((a, b, c, d))
        if len(buf) >= _FLUSH_EVERY:
            self._flush()

    def add_text(self, text: str) -> None:
        """Fold in a rare, descriptive record (a fault, a violation)."""
        self._flush()
        self._hash.update(text.encode())

    def _flush(self) -> None:
        if self._buf:
            self.count += len(self._buf) // 4
            self._hash.update(self._buf.tobytes())
            self._buf = array("q")

    def hexdigest(self) -> str:
        self._flush()
        return self._hash.copy().hexdigest()


class Engine:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0
        self._heap: list = []
        self._seq = 0
        self._cancelled: set[int] = set()
        self.log = EventLog()
        self.events_run = 0
        self._stop = False

    def derive_rng(self) -> random.Random:
        """An independent generator for one component, drawn from the master in construction order."""
        return random.Random(self.rng.getrandbits(64))

    def at(self, at_ns: int, fn: Callable, a=None, b=None) -> int:
        """Schedule `fn(a, b)` at `at_ns` (never in the past); returns the event's seq, for `cancel`."""
        self._seq += 1
        if at_ns < self.now:
            at_ns = self.now
        heapq.heappush(self._heap, (at_ns, self._seq, fn, a, b))
        return self._seq

    def after(self, delay_ns: int, fn: Callable, a=None, b=None) -> int:
        return self.at(self.now + delay_ns, fn, a, b)

    def cancel(self, seq: int) -> None:
        self._cancelled.add(seq)

    def stop(self) -> None:
        """Stop `run_until` after the current event (the state machine steps one event at a time)."""
        self._stop = True

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pending(self) -> list[tuple]:
        """Every scheduled, uncancelled event in the order it will run (for tests; O(n log n))."""
        return sorted(e for e in self._heap if e[1] not in self._cancelled)

    def run_until(self, until_ns: int, max_events: int | None = None) -> None:
        """Run every event due at or before `until_ns`, then leave the clock at `until_ns`."""
        heap, pop, cancelled = self._heap, heapq.heappop, self._cancelled
        self._stop = False
        budget = max_events if max_events is not None else -1
        ran = 0
        while heap and heap[0][0] <= until_ns and budget != 0:
            at_ns, seq, fn, a, b = pop(heap)
            if cancelled and seq in cancelled:
                cancelled.discard(seq)
                continue
            self.now = at_ns
            fn(a, b)
            ran += 1
            budget -= 1
            if self._stop:
                break
        self.events_run += ran
        if budget != 0 and not self._stop and self.now < until_ns:
            self.now = until_ns

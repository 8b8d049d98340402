"""The Raft log, and what of it must survive a restart.

Theory of operation. Raft is safe across crashes only if three things are durable before a replica answers
anyone: its current term, whom it voted for in that term, and its log. Here the log is a snapshot (the state
machine at `last_index`, with the replica set in force there) followed by the entries after it.

`RaftLog` is the replica's in-memory copy. It records which part it changed since the last `drain()`, and
the replica turns that into a `Persist` effect; the driver applies the effect to its own `PersistentState`
(in memory for the simulator, written to disk by the runtime) and hands that object back to the replica's
constructor after a restart. Commit index, applied index, the state machine and every leader structure are
volatile: they are rebuilt from the snapshot and from what the leader says.

Indexes start at 1; index 0 is the empty snapshot every log starts from.
"""

from __future__ import annotations

from typing import Any

from p2pcompute.table.effects import Persist

Entry = tuple  # (term, command)


class PersistentState:
    """The durable part of a replica. The runtime stores it (for example as `to_plain()` pickled, rewritten
    on each `Persist`, or as a snapshot file plus an append-only entry file) and passes it back on restart."""

    def __init__(self) -> None:
        self.term = 0
        self.voted_for: str | None = None
        # (last_index, last_term, replicas {id: addr}, state-machine snapshot or None for the empty state)
        self.snapshot: tuple = (0, 0, {}, None)
        self.entries: list[Entry] = []  # the entries after snapshot[0]

    @classmethod
    def bootstrap(cls, replicas: dict[str, str]) -> PersistentState:
        """The state of a brand-new table whose first replica set is `replicas`.

        Every member of that first set must start from this same state, so the set itself needs no
        agreement: it is the snapshot at index 0.
        """
        state = cls()
        state.snapshot = (0, 0, dict(replicas), None)
        return state

    def apply(self, p: Persist) -> None:
        self.term, self.voted_for = p.term, p.voted_for
        if p.snapshot is not None:
            keep_after = p.snapshot[0] - self.snapshot[0]
            self.entries = self.entries[keep_after:] if keep_after < len(self.entries) else []
            self.snapshot = p.snapshot
        if p.log_from_index is not None:
            position = p.log_from_index - self.snapshot[0] - 1
            assert 0 <= position <= len(self.entries), "Persist would leave a gap in the stored log"
            self.entries[position:] = list(p.entries)

    def to_plain(self) -> dict:
        return {"term": self.term, "voted_for": self.voted_for, "snapshot": self.snapshot,
                "entries": list(self.entries)}

    @classmethod
    def from_plain(cls, data: dict) -> PersistentState:
        state = cls()
        state.term, state.voted_for = data["term"], data["voted_for"]
        state.snapshot, state.entries = tuple(data["snapshot"]), list(data["entries"])
        return state


class RaftLog:
    """A snapshot plus the entries after it, addressed by Raft index; tracks its own unsaved changes."""

    def __init__(self, stored: PersistentState) -> None:
        self.snapshot_index, self.snapshot_term, replicas, self.snapshot_state = stored.snapshot
        self.snapshot_replicas: dict[str, str] = dict(replicas)
        self.entries: list[Entry] = list(stored.entries)
        # Unsaved changes: the lowest index rewritten, and whether the snapshot changed.
        self._dirty_from: int | None = None
        self._snapshot_dirty = False

    # ---- reading ----

    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1][0] if self.entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None when it is compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if self.snapshot_index < index <= self.last_index():
            return self.entries[index - self.snapshot_index - 1][0]
        return None

    def entry(self, index: int) -> Entry:
        assert self.snapshot_index < index <= self.last_index(), f"entry {index} is not in the log"
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, first: int, limit: int) -> list[Entry]:
        """Up to `limit` entries starting at index `first` (which must be after the snapshot)."""
        start = first - self.snapshot_index - 1
        assert start >= 0
        return self.entries[start:start + limit]

    def first_index_of_term(self, index: int) -> int:
        """The first index at or before `index` whose entry has the same term: a follower's hint to skip a
        whole conflicting term in one round trip instead of one entry per round trip."""
        term = self.term_at(index)
        while index - 1 > self.snapshot_index and self.term_at(index - 1) == term:
            index -= 1
        return index

    def latest_config(self, up_to: int | None = None) -> tuple[int, dict[str, str]]:
        """(index, replicas) of the last configuration at or before `up_to` (default: the end of the log).

        Raft uses the latest configuration in its log whether committed or not.
        """
        index = self.last_index() if up_to is None else min(up_to, self.last_index())
        while index > self.snapshot_index:
            command = self.entry(index)[1]
            if command[0] == "config":
                return index, command[1]
            index -= 1
        return self.snapshot_index, self.snapshot_replicas

    # ---- writing ----

    def append(self, entries: list[Entry]) -> None:
        if entries:
            self._mark(self.last_index() + 1)
            self.entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop the entry at `index` and everything after it."""
        assert index > self.snapshot_index
        self._mark(index)
        del self.entries[index - self.snapshot_index - 1:]

    def compact(self, index: int, replicas: dict[str, str], state: Any) -> None:
        """Replace the entries up to `index` (which must be in the log) with a snapshot of the state there."""
        term = self.term_at(index)
        assert term is not None and index >= self.snapshot_index
        del self.entries[:index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term
        self.snapshot_replicas, self.snapshot_state = dict(replicas), state
        self._snapshot_dirty = True

    def install(self, index: int, term: int, replicas: dict[str, str], state: Any) -> None:
        """Take a leader's snapshot. Entries after it survive only if the log agrees with it at `index`."""
        if self.term_at(index) == term and index <= self.last_index():
            self.compact(index, replicas, state)
            return
        self.entries = []
        self.snapshot_index, self.snapshot_term = index, term
        self.snapshot_replicas, self.snapshot_state = dict(replicas), state
        self._snapshot_dirty = True
        self._mark(index + 1)

    def mark_unsaved(self) -> None:
        """Everything here is new to stable storage (a table just bootstrapped)."""
        self._snapshot_dirty = True
        if self.entries:
            self._mark(self.snapshot_index + 1)

    def _mark(self, index: int) -> None:
        self._dirty_from = index if self._dirty_from is None else min(self._dirty_from, index)

    def drain(self, term: int, voted_for: str | None, hard_state_dirty: bool) -> Persist | None:
        """The Persist effect for everything changed since the last drain, or None if nothing was."""
        if self._dirty_from is None and not self._snapshot_dirty and not hard_state_dirty:
            return None
        snapshot = None
        if self._snapshot_dirty:
            snapshot = (self.snapshot_index, self.snapshot_term, dict(self.snapshot_replicas),
                        self.snapshot_state)
        log_from = entries = None
        if self._dirty_from is not None:
            log_from = max(self._dirty_from, self.snapshot_index + 1)
            entries = tuple(self.entries[log_from - self.snapshot_index - 1:])
        self._dirty_from, self._snapshot_dirty = None, False
        return Persist(term=term, voted_for=voted_for, snapshot=snapshot, log_from_index=log_from,
                       entries=entries or ())

    def to_persistent(self, term: int, voted_for: str | None) -> PersistentState:
        """A copy of what is durable, as a restart would find it (for tests and for a first save)."""
        stored = PersistentState()
        stored.term, stored.voted_for = term, voted_for
        stored.snapshot = (self.snapshot_index, self.snapshot_term, dict(self.snapshot_replicas),
                           self.snapshot_state)
        stored.entries = list(self.entries)
        return stored

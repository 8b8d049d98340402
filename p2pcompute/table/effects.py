"""Effects of the table cores, beyond the common `Send` and `Timer`.

Order matters within one returned list: a `Persist` always comes first, and the driver must make it durable
before it carries out any `Send` of the same list — a vote or an acknowledgement that goes out before the
vote or the entries are on disk can break Raft's safety after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Persist:
    """Write these changes to stable storage (see `storage.PersistentState.apply`) before any later Send.

    - `term`, `voted_for`: the hard state, always the current values.
    - `snapshot`: a new snapshot `(last_index, last_term, replicas, state)` or None. Log entries up to its
      `last_index` may then be dropped.
    - `log_from_index`: when not None, every stored entry at or after this index is replaced by `entries`
      (an append is the case where nothing is replaced). Applied after the snapshot.
    """

    term: int
    voted_for: str | None
    snapshot: tuple | None
    log_from_index: int | None
    entries: tuple


@dataclass(frozen=True, slots=True)
class Reply:
    """Client core -> its caller: request `request_id` finished. `error` is "" on success, else one of the
    codes in `messages` (NOT_LEADER never reaches the caller: the client retries it)."""

    request_id: int
    ok: bool
    result: Any
    error: str


@dataclass(frozen=True, slots=True)
class TableEvent:
    """Client core -> its caller: the read cache applied the committed `changes` of log index `index`.

    Each change is `(table, key, record)`, record None for a deletion. After a snapshot replaced the cache,
    `index` is the snapshot's and `changes` is None: re-read whatever you watch.
    """

    index: int
    changes: list | None


@dataclass(frozen=True, slots=True)
class ReplicaSetChanged:
    """Replica -> runtime: the replica set or the leader this replica knows changed; gossip it so peers and
    clients know whom to ask. `replicas` maps peer id to address (the latest configuration in this replica's
    log, which may not be committed yet)."""

    replicas: dict
    leader_id: str | None
    leader_addr: str | None

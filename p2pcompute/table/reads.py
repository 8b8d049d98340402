"""Linearizable reads without writing to the log (ReadIndex, Raft dissertation section 6.4).

Theory of operation. A read must see every write acknowledged before it arrived. The leader knows its commit
index covers all of them once it has committed an entry of its own term (its no-op), but it must also be
sure it is still the leader: a newer one may have been elected behind a partition. So a read waits for:

1. a read index: the leader's commit index when the read is taken up (after its no-op committed);
2. a round: the leader bumps `seq`, which every AppendEntries carries and every reply echoes; a reply of
   the leader's term echoing a seq at or above the read's proves that follower still followed it after the
   read arrived, so once a majority has, no newer leader existed at that moment;
3. the state machine having applied up to the read index.

All reads waiting at the same moment share one round. This module only keeps that bookkeeping; the replica
knows the quorum and sends the rounds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PendingRead:
    reply_to: str
    client_id: str
    request_id: int
    op: tuple
    read_index: int | None = None  # set when the leader knows its commit index is current
    seq: int | None = None         # the round a majority must acknowledge


class ReadIndex:
    def __init__(self) -> None:
        self.seq = 0  # the current round; echoed by followers
        self.pending: list[PendingRead] = []

    def add(self, read: PendingRead) -> None:
        self.pending.append(read)

    def start_round(self, commit_index: int) -> bool:
        """Give every read without one this read index and a new round. True if a round must be sent."""
        waiting = [read for read in self.pending if read.read_index is None]
        if not waiting:
            return False
        self.seq += 1
        for read in waiting:
            read.read_index, read.seq = commit_index, self.seq
        return True

    def ready(self, confirmed_seq: int, applied_index: int) -> list[PendingRead]:
        """Remove and return the reads whose round a majority confirmed and whose index is applied."""
        done, waiting = [], []
        for read in self.pending:
            confirmed = read.seq is not None and read.seq <= confirmed_seq and read.read_index <= applied_index
            (done if confirmed else waiting).append(read)
        self.pending = waiting
        return done

    def clear(self) -> list[PendingRead]:
        """Forget every pending read (leadership lost or gained) and return them."""
        reads, self.pending, self.seq = self.pending, [], 0
        return reads

"""Raft for the replicated metadata table: elections, replication, snapshots, membership, linearizable reads.

Theory of operation. A `TableReplica` is a pure state machine: the driver feeds it messages, ticks and the
live-peer list, with the time as `now_ns`, and carries out the effects it returns (`Send`, `Timer`,
`Persist`, `ReplicaSetChanged`). Every peer runs one; only the members of the current configuration vote and
hold the table, the others wait until a leader adds them. It follows the Raft paper and Ongaro's
dissertation:

- Elections. A follower that hears nothing from a leader for a random election timeout first runs a
  pre-vote (would a majority vote for me?), and only then increments its term. A replica that heard from a
  leader within the minimum election timeout refuses to vote, and a leader steps down when it has not heard
  from a majority for the maximum election timeout (check quorum). Together these keep a partitioned or
  removed replica from deposing a healthy leader when it comes back.
- Replication. The leader sends each follower the entries from its `next_index` on (or the snapshot when
  those are compacted); an entry of the current term is committed once a majority stores it. The leader
  appends a no-op when elected so that it commits earlier terms' entries promptly.
- Commands. A log entry is `(term, command)`, with command one of
      ("noop",)
      ("config", {peer_id: addr})                           the whole new replica set
      ("op", client_id, request_id, acked_below, op)       a client write, deduplicated by the state machine
- Reads (ReadIndex). A read arriving at the leader waits until the leader has committed its no-op, records
  the commit index, and starts a round: it bumps `seq`, which every AppendEntries carries and every reply
  echoes. Once a majority echoed a seq at or above the read's, no newer leader can have committed anything
  the read misses, so it is answered from the state machine as soon as it has applied up to that index.
- Membership. The leader proposes one change at a time (`replicaset.next_replicas`), only after the previous
  one committed and after it committed an entry of its own term. A configuration takes effect as soon as it
  is in a replica's log. A new member catches up from the log or, when the log was compacted, from one
  `InstallSnapshot`.
- Persistence. Current term, vote and log are durable (see `storage.py`); everything else is rebuilt.

A remote message that is malformed or makes no sense now is dropped and counted in `stats`; nothing a peer
or a client sends can raise here.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from p2pcompute.net.effects import Effect, Send, Timer
from p2pcompute.table.effects import ReplicaSetChanged
from p2pcompute.table.messages import (NOT_LEADER, AppendEntries, AppendEntriesReply, ClientReply,
                                       ClientRequest, InstallSnapshot, InstallSnapshotReply, RequestVote,
                                       RequestVoteReply, Subscribe, valid_for_replica)
from p2pcompute.table.reads import PendingRead, ReadIndex
from p2pcompute.table.replicaset import next_replicas
from p2pcompute.table.state import MAX_SESSIONS, TableState, is_read
from p2pcompute.table.storage import PersistentState, RaftLog
from p2pcompute.table.subscriptions import Subscriptions

MS = 1_000_000
FOLLOWER, CANDIDATE, LEADER = "follower", "candidate", "leader"


@dataclass
class RaftConfig:
    election_timeout_min_ms: int = 500
    election_timeout_max_ms: int = 1000
    heartbeat_interval_ms: int = 100
    target_replicas: int = 5  # any two replicas may die at once; 3 while fewer than 5 peers are alive
    max_entries_per_append: int = 64
    snapshot_threshold_entries: int = 1000  # compact the log once this many entries are applied past it
    subscription_ttl_ms: int = 10_000
    subscription_keepalive_ms: int = 250
    subscription_buffer_entries: int = 1024
    max_sessions: int = MAX_SESSIONS  # must be the same on every replica: it shapes the state machine


class TableReplica:
    """One replica of the metadata table. See the module docstring.

    Every peer runs one. After constructing it, call `on_tick(now_ns)` once to get its first `Timer`; then
    feed it every message addressed to it, a tick whenever a requested timer is due, and the live-peer list
    from membership whenever it changes (or periodically). Carry out each returned list in order: `Persist`
    (first, when present) must be durable before any `Send` of the same list leaves.
    """

    def __init__(self, node_id: str, addr: str, *, config: RaftConfig | None = None, rng: random.Random,
                 now_ns: int, bootstrap: bool = False, peers: dict[str, str] | None = None,
                 persistent: PersistentState | None = None) -> None:
        """`persistent` is what a previous incarnation persisted (a restart); otherwise a replica with
        `bootstrap` starts a new table whose replica set is `peers` plus itself (every member of that set
        must be started the same way), and one without waits to be added by a leader."""
        self.node_id, self.addr = node_id, addr
        self.config = config or RaftConfig()
        self.rng = rng
        fresh_bootstrap = persistent is None and bootstrap
        if persistent is None:
            persistent = (PersistentState.bootstrap({**(peers or {}), node_id: addr}) if bootstrap
                          else PersistentState())
        self.log = RaftLog(persistent)
        self.term, self.voted_for = persistent.term, persistent.voted_for
        self._hard_state_dirty = fresh_bootstrap
        if fresh_bootstrap:
            self.log.mark_unsaved()  # so that the first Persist carries the first replica set
        self.state = TableState.restore(self.log.snapshot_state, self.config.max_sessions)
        self.commit_index = self.last_applied = self.log.snapshot_index
        self._config_index, self._replicas = self.log.latest_config()
        self._replicas = dict(self._replicas)

        self.role = FOLLOWER
        self.leader_id: str | None = None
        self.leader_addr: str | None = None
        self._leader_contact_ns: int | None = None  # when we last heard from a leader of our term
        self._election_deadline_ns = 0
        self._reset_election_timer(now_ns)
        if fresh_bootstrap and set(self._replicas) == {node_id}:
            self._election_deadline_ns = now_ns  # alone in a new table: nobody to wait for, lead at once
        self._prevoting = False
        self._votes: set[str] = set()
        # Leader only: per follower, replication progress and when it last answered.
        self._next: dict[str, int] = {}
        self._match: dict[str, int] = {}
        self._ack_ns: dict[str, int] = {}
        self._acked_seq: dict[str, int] = {}
        self._snapshot_sent_ns: dict[str, int] = {}
        self._answered: set[str] = set()  # followers that answered this leader (not only given a grace time)
        # Leader only: when each spare (a live peer outside the set) last answered a probe. Only a spare that
        # answered lately joins the set: membership needs seconds to notice a crash, and a dead peer added as a
        # voter leaves a set where one more death loses the majority (3 live of 5 ... then 2 of 4).
        self._spare_ack_ns: dict[str, int] = {}
        self._spare_probe_ns: dict[str, int] = {}
        self._reads = ReadIndex()
        self._term_start_index = 0  # index of this leader's no-op; reads and config changes wait for it
        self._heartbeat_due_ns = 0
        self._pending_writes: dict[int, list[tuple[str, str, int]]] = {}  # index -> (reply_to, cid, rid)
        self._alive: dict[str, str] | None = None  # the last live-peer list from membership

        self.subscriptions = Subscriptions(node_id, buffer_entries=self.config.subscription_buffer_entries)
        self.subscriptions.reset(self.last_applied)
        self._pushed_index = self.last_applied
        self._keepalive_due_ns = now_ns
        self._timer_at_ns: int | None = None
        self._published: tuple | None = None
        self.stats: Counter[str] = Counter()

    # ---- queries ----

    def is_leader(self) -> bool:
        return self.role == LEADER

    def leader_hint(self) -> tuple[str, str] | None:
        if self.leader_id is None or self.leader_addr is None:
            return None
        return self.leader_id, self.leader_addr

    def replicas(self) -> dict[str, str]:
        """The replica set in force here: the latest configuration in this replica's log."""
        return dict(self._replicas)

    def persistent_state(self) -> PersistentState:
        """A copy of what this replica has asked to persist (tests compare it with the driver's copy)."""
        return self.log.to_persistent(self.term, self.voted_for)

    # ---- inputs ----

    def on_message(self, now_ns: int, sender_addr: str, msg: Any) -> list[Effect]:
        out: list[Effect] = []
        handler = _HANDLERS.get(type(msg))
        if handler is None or not valid_for_replica(msg):
            self.stats["ignored_malformed"] += 1
        else:
            handler(self, now_ns, sender_addr, msg, out)
        return self._finish(now_ns, out)

    def on_tick(self, now_ns: int) -> list[Effect]:
        out: list[Effect] = []
        if self.role == LEADER:
            if now_ns >= self._heartbeat_due_ns:
                self._broadcast(now_ns, out)
                self._maybe_change_config(now_ns, out)  # a change held back until every member answered
            self._check_quorum(now_ns, out)
        elif now_ns >= self._election_deadline_ns:
            self._reset_election_timer(now_ns)
            if self.node_id in self._replicas:
                self._start_pre_vote(now_ns, out)
        if now_ns >= self._keepalive_due_ns:
            self._keepalive_due_ns = now_ns + self.config.subscription_keepalive_ms * MS
            out += self._push_subscribers(now_ns, keepalive=True)
        return self._finish(now_ns, out)

    def on_members(self, now_ns: int, alive: dict[str, str]) -> list[Effect]:
        """The peers membership currently believes alive (id -> address). Only the leader acts on it."""
        out: list[Effect] = []
        self._alive = dict(alive)
        self._maybe_change_config(now_ns, out)
        return self._finish(now_ns, out)

    # ---- operator recovery ----

    def recovery_state(self) -> tuple[int, int, int, int]:
        """(term, last log index, last log term, commit index): how far this replica got, for recovery."""
        return self.term, self.log.last_index(), self.log.last_term(), self.commit_index

    def force_lead(self, now_ns: int, replicas: dict[str, str], term: int) -> list[Effect]:
        """Lead a new replica set `replicas` (this replica among them) in a term above `term`, without an
        election. Only for an operator's recovery after a majority of the set died for good: it breaks
        Raft's rules (entries the lost majority committed beyond this log are lost; entries this log holds
        uncommitted become committed), which is why the caller must pick the most advanced survivor."""
        out: list = []
        self._become_follower(now_ns, max(self.term, term) + 1, out)
        self.voted_for, self._hard_state_dirty = self.node_id, True
        self._append(("config", {**replicas, self.node_id: self.addr}))
        self.stats["forced_leader"] += 1
        self._become_leader(now_ns, out)
        return self._finish(now_ns, out)

    # ---- elections ----

    def _reset_election_timer(self, now_ns: int) -> None:
        low, high = self.config.election_timeout_min_ms * MS, self.config.election_timeout_max_ms * MS
        self._election_deadline_ns = now_ns + self.rng.randint(low, high)

    def _has_quorum(self, voters: set[str]) -> bool:
        return 2 * len(voters & self._replicas.keys()) > len(self._replicas)

    def _start_pre_vote(self, now_ns: int, out: list) -> None:
        self._prevoting, self._votes = True, {self.node_id}
        if self._has_quorum(self._votes):
            self._start_election(now_ns, out)
            return
        self._ask_votes(out, pre_vote=True, term=self.term + 1)

    def _start_election(self, now_ns: int, out: list) -> None:
        self.term, self.voted_for, self._hard_state_dirty = self.term + 1, self.node_id, True
        self.role, self.leader_id, self.leader_addr = CANDIDATE, None, None
        self._prevoting, self._votes = False, {self.node_id}
        self._reset_election_timer(now_ns)
        if self._has_quorum(self._votes):
            self._become_leader(now_ns, out)
        else:
            self._ask_votes(out, pre_vote=False, term=self.term)

    def _ask_votes(self, out: list, *, pre_vote: bool, term: int) -> None:
        ask = RequestVote(term=term, candidate_id=self.node_id, last_log_index=self.log.last_index(),
                          last_log_term=self.log.last_term(), pre_vote=pre_vote)
        out += [Send(addr, ask) for peer, addr in sorted(self._replicas.items()) if peer != self.node_id]

    def _log_up_to_date(self, last_term: int, last_index: int) -> bool:
        """A candidate's log is at least as up to date as ours (Raft section 5.4.1)."""
        return (last_term, last_index) >= (self.log.last_term(), self.log.last_index())

    def _on_request_vote(self, now_ns: int, sender: str, m: RequestVote, out: list) -> None:
        log_ok = self._log_up_to_date(m.last_log_term, m.last_log_index)
        leader_alive = self.role == LEADER or (
            self._leader_contact_ns is not None
            and now_ns - self._leader_contact_ns < self.config.election_timeout_min_ms * MS)
        if leader_alive:
            self.stats["vote_refused_leader_alive"] += 1
            granted = False
        elif m.pre_vote:
            granted = m.term > self.term and log_ok
        else:
            if m.term > self.term:
                self._become_follower(now_ns, m.term, out)
            granted = m.term == self.term and self.voted_for in (None, m.candidate_id) and log_ok
            if granted:
                self.voted_for, self._hard_state_dirty = m.candidate_id, True
                self._reset_election_timer(now_ns)
        term = m.term if (granted and m.pre_vote) else self.term
        out.append(Send(sender, RequestVoteReply(term=term, voter_id=self.node_id, granted=granted,
                                                 pre_vote=m.pre_vote)))

    def _on_request_vote_reply(self, now_ns: int, sender: str, m: RequestVoteReply, out: list) -> None:
        if m.term > self.term and not (m.pre_vote and m.granted):
            self._become_follower(now_ns, m.term, out)
            return
        if not m.granted:
            return
        if m.pre_vote and self._prevoting and m.term == self.term + 1:
            self._votes.add(m.voter_id)
            if self._has_quorum(self._votes):
                self._start_election(now_ns, out)
        elif not m.pre_vote and self.role == CANDIDATE and m.term == self.term:
            self._votes.add(m.voter_id)
            if self._has_quorum(self._votes):
                self._become_leader(now_ns, out)

    def _become_leader(self, now_ns: int, out: list) -> None:
        self.role, self.leader_id, self.leader_addr = LEADER, self.node_id, self.addr
        self._next, self._match, self._ack_ns, self._acked_seq = {}, {}, {}, {}
        self._snapshot_sent_ns, self._answered = {}, set()
        self._spare_ack_ns, self._spare_probe_ns = {}, {}
        self._reads.clear()
        self._sync_followers(now_ns)
        self._term_start_index = self._append(("noop",))
        self._broadcast(now_ns, out)
        self._advance_commit(now_ns, out)

    def _become_follower(self, now_ns: int, term: int, out: list) -> None:
        """Step down to follower (in a newer `term` if given one), failing what a leader had in flight."""
        if term > self.term:
            self.term, self.voted_for, self._hard_state_dirty = term, None, True
            self.leader_id = self.leader_addr = None
        if self.role == LEADER:
            self.leader_id = self.leader_addr = None
            for index in sorted(self._pending_writes):
                for reply_to, cid, rid in self._pending_writes[index]:
                    out.append(self._refusal(reply_to, cid, rid))
            out += [self._refusal(r.reply_to, r.client_id, r.request_id) for r in self._reads.clear()]
            self._pending_writes = {}
            self._reset_election_timer(now_ns)
        self.role, self._prevoting = FOLLOWER, False

    def _check_quorum(self, now_ns: int, out: list) -> None:
        horizon_ns = now_ns - self.config.election_timeout_max_ms * MS
        heard = {peer for peer, at_ns in self._ack_ns.items() if at_ns >= horizon_ns} | {self.node_id}
        if not self._has_quorum(heard):
            self.stats["stepped_down_no_quorum"] += 1
            self._become_follower(now_ns, self.term, out)

    # ---- replication, leader side ----

    def _sync_followers(self, now_ns: int) -> None:
        """Track exactly the current members other than ourselves."""
        for peer in list(self._next):
            if peer not in self._replicas:
                for table in (self._next, self._match, self._ack_ns, self._acked_seq):
                    table.pop(peer, None)
                self._answered.discard(peer)
        for peer in self._replicas:
            if peer != self.node_id and peer not in self._next:
                self._next[peer], self._match[peer] = self.log.last_index() + 1, 0
                self._ack_ns[peer], self._acked_seq[peer] = now_ns, 0

    def _append(self, command: tuple) -> int:
        self.log.append([(self.term, command)])
        index = self.log.last_index()
        if command[0] == "config":
            self._config_index, self._replicas = index, dict(command[1])
        return index

    def _broadcast(self, now_ns: int, out: list) -> None:
        """Send every follower what it misses (a heartbeat for those missing nothing)."""
        self._heartbeat_due_ns = now_ns + self.config.heartbeat_interval_ms * MS
        for peer in sorted(self._next):
            self._send_append(now_ns, peer, out)

    def _send_append(self, now_ns: int, peer: str, out: list) -> None:
        addr, next_index = self._replicas[peer], self._next[peer]
        if next_index <= self.log.snapshot_index:
            # A snapshot is the whole state: send it at most once per heartbeat interval per follower.
            last_ns = self._snapshot_sent_ns.get(peer)
            if last_ns is not None and now_ns - last_ns < self.config.heartbeat_interval_ms * MS:
                return
            self._snapshot_sent_ns[peer] = now_ns
            out.append(Send(addr, InstallSnapshot(
                term=self.term, leader_id=self.node_id, leader_addr=self.addr,
                last_index=self.log.snapshot_index, last_term=self.log.snapshot_term,
                replicas=dict(self.log.snapshot_replicas), state=self.log.snapshot_state, seq=self._reads.seq)))
            return
        prev = next_index - 1
        out.append(Send(addr, AppendEntries(
            term=self.term, leader_id=self.node_id, leader_addr=self.addr, prev_log_index=prev,
            prev_log_term=self.log.term_at(prev), entries=self.log.slice(next_index,
                                                                           self.config.max_entries_per_append),
            leader_commit=self.commit_index, seq=self._reads.seq)))

    def _on_append_entries_reply(self, now_ns: int, sender: str, m: AppendEntriesReply, out: list) -> None:
        peer = m.follower_id
        if (self.role == LEADER and m.term == self.term and peer not in self._next and self._alive is not None
                and peer in self._alive and peer not in self._replicas):
            self._spare_ack_ns[peer] = now_ns  # a spare answered our probe: it is up, and follows us
            self._maybe_change_config(now_ns, out)
            return
        if not self._current_follower_reply(now_ns, m.term, peer, m.seq, out):
            return
        if m.success:
            if m.match_index > self.log.last_index():
                self.stats["ignored_bad_match"] += 1
                return
            advanced = m.match_index > self._match[peer]
            self._match[peer] = max(self._match[peer], m.match_index)
            self._next[peer] = max(self._next[peer], self._match[peer] + 1)
            self._advance_commit(now_ns, out)
            # Keep a catching-up follower streaming, but only from replies that made progress, so that
            # duplicated or repeated sends cannot multiply into parallel streams.
            if advanced and self.role == LEADER and peer in self._next and \
                    self._next[peer] <= self.log.last_index():
                self._send_append(now_ns, peer, out)
        else:
            lowered = max(self._match[peer] + 1, min(self._next[peer] - 1, m.conflict_index), 1)
            if lowered < self._next[peer]:  # retry at once only when backing off: never a tight loop
                self._next[peer] = lowered
                self._send_append(now_ns, peer, out)
        self._serve_reads(out)

    def _on_install_snapshot_reply(self, now_ns: int, sender: str, m: InstallSnapshotReply, out: list) -> None:
        peer = m.follower_id
        if not self._current_follower_reply(now_ns, m.term, peer, m.seq, out):
            return
        if m.last_index <= self.log.last_index():
            self._match[peer] = max(self._match[peer], m.last_index)
            self._next[peer] = max(self._next[peer], self._match[peer] + 1)
            self._advance_commit(now_ns, out)
        self._serve_reads(out)

    def _current_follower_reply(self, now_ns: int, term: int, peer: str, seq: int, out: list) -> bool:
        """Common part of the replies to a leader: a newer term deposes us; a reply from this term is proof
        that `peer` still follows us, as of read round `seq`."""
        if term > self.term:
            self._become_follower(now_ns, term, out)
            return False
        if self.role != LEADER or term != self.term or peer not in self._next:
            self.stats["ignored_stale_reply"] += 1
            return False
        self._ack_ns[peer] = now_ns
        self._answered.add(peer)
        self._acked_seq[peer] = max(self._acked_seq[peer], min(seq, self._reads.seq))
        return True

    def _majority_match(self) -> int:
        """The highest log index a majority of the replica set holds."""
        held = sorted((self.log.last_index() if peer == self.node_id else self._match.get(peer, 0)
                       for peer in self._replicas), reverse=True)
        return held[len(held) // 2] if held else 0

    def _advance_commit(self, now_ns: int, out: list) -> None:
        if self.role != LEADER:
            return
        candidate = self._majority_match()
        # Only an entry of our own term is committed by counting (Raft section 5.4.2).
        if candidate > self.commit_index and self.log.term_at(candidate) == self.term:
            self.commit_index = candidate
            self._apply_committed(now_ns, out)
            if self.role == LEADER:
                # Tell the followers now rather than at the next heartbeat: their subscribers' caches and
                # their own state lag the leader by one round trip instead of a heartbeat interval.
                if not self._start_read_round(now_ns, out):
                    self._broadcast(now_ns, out)
                self._maybe_change_config(now_ns, out)

    # ---- replication, follower side ----

    def _on_append_entries(self, now_ns: int, sender: str, m: AppendEntries, out: list) -> None:
        if not self._accept_leader(now_ns, m.term, m.leader_id, m.leader_addr, out):
            out.append(Send(sender, AppendEntriesReply(term=self.term, follower_id=self.node_id, success=False,
                                                       match_index=0, conflict_index=0, seq=m.seq)))
            return
        prev, entries = m.prev_log_index, m.entries
        if prev < self.log.snapshot_index:
            # Everything up to our snapshot is committed, hence identical in the leader's log.
            entries, prev = entries[self.log.snapshot_index - prev:], self.log.snapshot_index
        elif self.log.term_at(prev) != m.prev_log_term:
            conflict = (self.log.last_index() + 1 if prev > self.log.last_index()
                        else self.log.first_index_of_term(prev))
            out.append(Send(sender, AppendEntriesReply(term=self.term, follower_id=self.node_id, success=False,
                                                       match_index=0, conflict_index=conflict, seq=m.seq)))
            return
        for offset, entry in enumerate(entries):
            index = prev + 1 + offset
            have = self.log.term_at(index)
            if have == entry[0]:
                continue
            if have is not None:
                if index <= self.commit_index:
                    # Only a leader that broke Raft's rules can ask this; keep what we committed.
                    self.stats["ignored_conflict_with_committed"] += 1
                    return
                self.log.truncate_from(index)
            self.log.append(entries[offset:])
            self._log_changed(index)
            break
        match = max(prev + len(entries), m.prev_log_index + len(m.entries))
        if min(m.leader_commit, match) > self.commit_index:
            self.commit_index = min(m.leader_commit, match)
            self._apply_committed(now_ns, out)
        out.append(Send(sender, AppendEntriesReply(term=self.term, follower_id=self.node_id, success=True,
                                                   match_index=match, conflict_index=0, seq=m.seq)))

    def _on_install_snapshot(self, now_ns: int, sender: str, m: InstallSnapshot, out: list) -> None:
        if not self._accept_leader(now_ns, m.term, m.leader_id, m.leader_addr, out):
            out.append(Send(sender, InstallSnapshotReply(term=self.term, follower_id=self.node_id, last_index=0,
                                                         seq=m.seq)))
            return
        if m.last_index > self.commit_index:
            try:
                state = TableState.restore(m.state, self.config.max_sessions)
            except ValueError:
                self.stats["ignored_bad_snapshot"] += 1
                return
            self.log.install(m.last_index, m.last_term, m.replicas, m.state)
            self.state, self.commit_index, self.last_applied = state, m.last_index, m.last_index
            self.subscriptions.reset(m.last_index)
            self._pushed_index = m.last_index
            self._log_changed(0)
        out.append(Send(sender, InstallSnapshotReply(term=self.term, follower_id=self.node_id,
                                                     last_index=m.last_index, seq=m.seq)))

    def _accept_leader(self, now_ns: int, term: int, leader_id: str, leader_addr: str, out: list) -> bool:
        """Follow the sender if its term is current; False if the message is from a stale leader."""
        if term < self.term:
            self.stats["refused_stale_leader"] += 1
            return False
        if self.role == LEADER and term == self.term:
            self.stats["ignored_second_leader"] += 1  # impossible in Raft: never follow it
            return False
        if term > self.term or self.role != FOLLOWER:
            self._become_follower(now_ns, term, out)
        self.leader_id, self.leader_addr = leader_id, leader_addr
        self._leader_contact_ns = now_ns
        self._prevoting = False
        self._reset_election_timer(now_ns)
        return True

    def _log_changed(self, from_index: int) -> None:
        """Entries from `from_index` on were replaced or appended: the latest configuration may differ."""
        if from_index <= self._config_index:
            self._config_index, replicas = self.log.latest_config()
        else:
            for index in range(self.log.last_index(), from_index - 1, -1):
                command = self.log.entry(index)[1]
                if command[0] == "config":
                    self._config_index, replicas = index, command[1]
                    break
            else:
                return
        self._replicas = dict(replicas)

    # ---- applying committed entries ----

    def _apply_committed(self, now_ns: int, out: list) -> None:
        while self.last_applied < self.commit_index:
            index = self.last_applied + 1
            command = self.log.entry(index)[1]
            if command[0] == "op":
                _, cid, rid, acked_below, op = command
                (ok, result, error), changes = self.state.apply_command(index, cid, rid, acked_below, op)
                self.subscriptions.record(index, changes)
                for reply_to, waiting_cid, waiting_rid in self._pending_writes.pop(index, ()):
                    if (waiting_cid, waiting_rid) == (cid, rid):
                        out.append(self._reply(reply_to, cid, rid, ok, result, error, index))
            self.last_applied = index
        if self.role == LEADER and self.node_id not in self._replicas and self._config_index <= self.commit_index:
            self._become_follower(now_ns, self.term, out)  # our removal committed: let the others elect
        if self.last_applied - self.log.snapshot_index >= self.config.snapshot_threshold_entries:
            replicas = self.log.latest_config(self.last_applied)[1]
            self.log.compact(self.last_applied, replicas, self.state.snapshot())
        self._serve_reads(out)

    # ---- clients ----

    def _on_client_request(self, now_ns: int, sender: str, m: ClientRequest, out: list) -> None:
        if self.role != LEADER:
            out.append(self._refusal(m.reply_to, m.client_id, m.request_id))
            return
        if is_read(m.op):
            self._reads.add(PendingRead(m.reply_to, m.client_id, m.request_id, m.op))
            self._start_read_round(now_ns, out)
            return
        outcome = self.state.outcome_of(m.client_id, m.request_id)
        if outcome is not None:  # a retry of an applied write: answer with its first outcome
            out.append(self._reply(m.reply_to, m.client_id, m.request_id, *outcome, self.last_applied))
            return
        index = self._append(("op", m.client_id, m.request_id, m.acked_below, m.op))
        self._pending_writes.setdefault(index, []).append((m.reply_to, m.client_id, m.request_id))
        self._broadcast(now_ns, out)
        self._advance_commit(now_ns, out)

    def _start_read_round(self, now_ns: int, out: list) -> bool:
        """Take up waiting reads once our no-op committed, with one heartbeat round confirming leadership.
        True if it broadcast that round."""
        if self.commit_index >= self._term_start_index and self._reads.start_round(self.commit_index):
            self._broadcast(now_ns, out)
            self._serve_reads(out)
            return True
        return False

    def _serve_reads(self, out: list) -> None:
        if self.role != LEADER or not self._reads.pending:
            return
        acked = sorted((self._reads.seq if peer == self.node_id else self._acked_seq.get(peer, 0)
                        for peer in self._replicas), reverse=True)
        confirmed_seq = acked[len(acked) // 2] if acked else 0  # the highest round a majority echoed
        for read in self._reads.ready(confirmed_seq, self.last_applied):
            ok, result, error = self.state.read(read.op)
            out.append(self._reply(read.reply_to, read.client_id, read.request_id, ok, result, error,
                                   self.last_applied))

    def _reply(self, reply_to: str, cid: str, rid: int, ok: bool, result: Any, error: str, index: int) -> Send:
        return Send(reply_to, ClientReply(client_id=cid, request_id=rid, ok=ok, result=result, error=error,
                                          index=index, leader_id=self.node_id, leader_addr=self.addr,
                                          replicas=dict(self._replicas)))

    def _refusal(self, reply_to: str, cid: str, rid: int) -> Send:
        return Send(reply_to, ClientReply(client_id=cid, request_id=rid, ok=False, result=None,
                                          error=NOT_LEADER, index=0, leader_id=self.leader_id,
                                          leader_addr=self.leader_addr, replicas=dict(self._replicas)))

    # ---- membership ----

    def _maybe_change_config(self, now_ns: int, out: list) -> None:
        if self.role != LEADER or self._alive is None:
            return
        if self._config_index > self.commit_index or self.commit_index < self._term_start_index:
            return  # one change at a time, and only once our no-op committed (dissertation errata)
        horizon_ns = now_ns - self.config.election_timeout_max_ms * MS
        answering = all(peer in self._answered and self._ack_ns.get(peer, 0) >= horizon_ns
                        for peer in self._replicas if peer != self.node_id)
        new = next_replicas(self._replicas, self._alive, self.node_id, self.config.target_replicas,
                            grow=answering)
        if new is not None:
            added = [peer for peer in new if peer not in self._replicas]
            acked_ns = self._spare_ack_ns.get(added[0]) if added else None
            if added and (acked_ns is None or acked_ns < horizon_ns):
                # A spare joins only once it answered lately: probe it (an empty heartbeat that commits
                # nothing), at most once per heartbeat interval, and decide again when it answers.
                last = self._spare_probe_ns.get(added[0])
                if last is None or now_ns - last >= self.config.heartbeat_interval_ms * MS:
                    self._spare_probe_ns[added[0]] = now_ns
                    out.append(Send(new[added[0]], AppendEntries(
                        term=self.term, leader_id=self.node_id, leader_addr=self.addr, prev_log_index=0,
                        prev_log_term=0, entries=[], leader_commit=0, seq=0)))
                return
        if new is None:
            return
        self._append(("config", new))
        self._sync_followers(now_ns)
        self._broadcast(now_ns, out)
        self._advance_commit(now_ns, out)

    # ---- subscriptions ----

    def _on_subscribe(self, now_ns: int, sender: str, m: Subscribe, out: list) -> None:
        self.subscriptions.subscribe(now_ns, m.reply_to, m.client_id, m.from_index,
                                     self.config.subscription_ttl_ms * MS)
        out += self._push_subscribers(now_ns, keepalive=True, only=m.reply_to)

    def _push_subscribers(self, now_ns: int, keepalive: bool, only: str | None = None) -> list[Send]:
        if only is None:
            self._pushed_index = self.last_applied
        if not self.subscriptions.subscribers:
            return []
        fresh = self.role == LEADER or (
            self._leader_contact_ns is not None
            and now_ns - self._leader_contact_ns < self.config.election_timeout_min_ms * MS)
        header = {"replicas": dict(self._replicas), "leader_id": self.leader_id,
                  "leader_addr": self.leader_addr, "fresh": fresh}
        return self.subscriptions.push(now_ns, self.last_applied, self.state.records, header, keepalive, only)

    # ---- end of every step ----

    def _finish(self, now_ns: int, out: list) -> list[Effect]:
        if self.last_applied > self._pushed_index:
            out += self._push_subscribers(now_ns, keepalive=False)
        persist = self.log.drain(self.term, self.voted_for, self._hard_state_dirty)
        self._hard_state_dirty = False
        if persist is not None:
            out.insert(0, persist)  # durable before anything we send depends on it
        published = (self._replicas, self.leader_id, self.leader_addr)
        if published != self._published:
            self._published = (dict(self._replicas), self.leader_id, self.leader_addr)
            out.append(ReplicaSetChanged(dict(self._replicas), self.leader_id, self.leader_addr))
        due_ns = self._heartbeat_due_ns if self.role == LEADER else self._election_deadline_ns
        if self.subscriptions.subscribers:
            due_ns = min(due_ns, self._keepalive_due_ns)
        if self._timer_at_ns is None or due_ns < self._timer_at_ns or self._timer_at_ns <= now_ns:
            self._timer_at_ns = due_ns
            out.append(Timer(due_ns))
        return out


_HANDLERS = {
    RequestVote: TableReplica._on_request_vote,
    RequestVoteReply: TableReplica._on_request_vote_reply,
    AppendEntries: TableReplica._on_append_entries,
    AppendEntriesReply: TableReplica._on_append_entries_reply,
    InstallSnapshot: TableReplica._on_install_snapshot,
    InstallSnapshotReply: TableReplica._on_install_snapshot_reply,
    ClientRequest: TableReplica._on_client_request,
    Subscribe: TableReplica._on_subscribe,
}

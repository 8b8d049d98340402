"""Replicated table messages. Type codes 300-399, append-only.

Four conversations share this block:

- Raft between replicas (300-305): votes, log replication with a read-round counter `seq`, snapshots.
- Clients to the replica set (306-307): one request, one reply; a reply from a non-leader says who leads.
- Cache subscriptions (308-310): a subscriber asks any replica for committed changes from an index on, and
  the replica pushes them (or a whole snapshot of the records when it no longer holds that far back).
- Recovery (311-313): after a majority of the replicas died for good, an operator's `p2p table recover`
  asks the survivors how far their logs go and tells the most advanced one to lead a set of the survivors.

A log entry is the plain tuple `(term, command)`; commands are the tuples described in `raft.py`. Records
and changes are the plain data described in `state.py`.
"""

from __future__ import annotations

from typing import Any

from p2pcompute.net.messages import FIELD_TYPES, message

# ClientReply.error values. The empty string means success.
NOT_LEADER = "not_leader"          # ask `leader_addr`, or another replica when it is None
STALE_REQUEST = "stale_request"    # the client already acknowledged a reply for this request id
BAD_OP = "bad_op"                  # the operation is malformed; retrying cannot help
TIMEOUT = "timeout"                # produced by the client core only, never sent by a replica


# ---- Raft between replicas --------------------------------------------------------------------------------


@message(300)
class RequestVote:
    """Candidate -> voter. With `pre_vote` it asks "would you vote for me in `term`?" and changes nothing,
    so a node cut off from the leader cannot inflate terms and depose a healthy leader when it returns."""

    term: int
    candidate_id: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool


@message(301)
class RequestVoteReply:
    term: int
    voter_id: str
    granted: bool
    pre_vote: bool


@message(302)
class AppendEntries:
    """Leader -> follower: entries after `prev_log_index` (empty for a heartbeat).

    `seq` is the leader's read-round counter; the follower echoes it so the leader knows a majority still
    followed it after a read arrived (ReadIndex).
    """

    term: int
    leader_id: str
    leader_addr: str
    prev_log_index: int
    prev_log_term: int
    entries: list
    leader_commit: int
    seq: int


@message(303)
class AppendEntriesReply:
    """`match_index` is the last index known to equal the leader's log when `success`; otherwise
    `conflict_index` is where the leader should retry from (the follower's hint, to skip a term at once)."""

    term: int
    follower_id: str
    success: bool
    match_index: int
    conflict_index: int
    seq: int


@message(304)
class InstallSnapshot:
    """Leader -> follower that is behind the leader's compacted log: the whole state at `last_index`.

    The state machine is small, so the snapshot travels in one message.
    """

    term: int
    leader_id: str
    leader_addr: str
    last_index: int
    last_term: int
    replicas: dict
    state: dict
    seq: int


@message(305)
class InstallSnapshotReply:
    term: int
    follower_id: str
    last_index: int
    seq: int


# ---- clients ------------------------------------------------------------------------------------------------


@message(306)
class ClientRequest:
    """Client -> replica. `request_id` is unique per client and reused on every retry of the same request,
    so a write is applied at most once. Every request id below `acked_below` has had its reply delivered,
    which lets the replicas forget those results."""

    client_id: str
    request_id: int
    acked_below: int
    op: tuple
    reply_to: str


@message(307)
class ClientReply:
    """Replica -> client. `index` is the log index the answer reflects (for the client's session order).
    On NOT_LEADER, `leader_*` is the replica's best guess (or None) and `replicas` the set it knows."""

    client_id: str
    request_id: int
    ok: bool
    result: Any
    error: str
    index: int
    leader_id: str | None
    leader_addr: str | None
    replicas: dict


# ---- cache subscriptions ------------------------------------------------------------------------------------


@message(308)
class Subscribe:
    """Subscriber -> replica: push me committed changes from `from_index` on. Repeated to renew (it expires)
    and to resume after a gap."""

    client_id: str
    reply_to: str
    from_index: int


@message(309)
class TableUpdate:
    """Replica -> subscriber: every committed index from `first_index` to `last_index` (inclusive) has been
    applied; `events` lists the `(index, changes)` of those that changed records. `fresh` is True while the
    replica is the leader or heard from one recently, so a cache can bound its staleness."""

    replica_id: str
    first_index: int
    last_index: int
    events: list
    replicas: dict
    leader_id: str | None
    leader_addr: str | None
    fresh: bool


@message(310)
class TableSnapshot:
    """Replica -> subscriber: all records as of `last_index`, sent when the replica no longer holds the
    changes the subscriber is missing."""

    replica_id: str
    last_index: int
    records: dict
    replicas: dict
    leader_id: str | None
    leader_addr: str | None
    fresh: bool


# ---- operator recovery after a lost majority (see runtime/table_service.py) ----------------------------------


@message(311)
class RecoverQuery:
    """Recovering peer -> each surviving replica's peer: how far does your log go?"""

    recovery_id: str
    reply_to: str


@message(312)
class RecoverState:
    recovery_id: str
    node_id: str
    term: int
    last_index: int
    last_term: int
    commit_index: int


@message(313)
class RecoverLead:
    """Recovering peer -> the most advanced survivor: lead a new replica set of the survivors, `replicas`,
    in a term above `term` (the highest any survivor reported)."""

    recovery_id: str
    term: int
    replicas: dict


RAFT_MESSAGES = (RequestVote, RequestVoteReply, AppendEntries, AppendEntriesReply, InstallSnapshot,
                 InstallSnapshotReply)


def well_typed(msg: Any) -> bool:
    """The codec's field type check, for a message that did not come through the codec (in-process)."""
    for name, accepted in FIELD_TYPES[type(msg)]:
        value = getattr(msg, name)
        if not isinstance(value, accepted) or (type(value) is bool and bool not in accepted):
            return False
    return True


def replicas_ok(replicas: Any) -> bool:
    """Is `replicas` a plain {peer id: address} map of strings?"""
    return isinstance(replicas, dict) and all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in replicas.items())


def valid_for_replica(msg: Any) -> bool:
    """Field types (as the codec checks them), then what the codec cannot see inside lists and dicts."""
    if not well_typed(msg):
        return False
    if isinstance(msg, AppendEntries):
        return msg.prev_log_index >= 0 and all(entry_ok(entry) for entry in msg.entries)
    if isinstance(msg, InstallSnapshot):
        return msg.last_index >= 0 and replicas_ok(msg.replicas)  # the state is checked as it is restored
    if isinstance(msg, ClientRequest):
        return msg.request_id >= 0 and bool(msg.op)  # the op is checked by the state machine
    return True


def entry_ok(entry: Any) -> bool:
    """Is `entry` a well-formed `(term, command)`? (See raft.py for the commands.)"""
    if not (isinstance(entry, tuple) and len(entry) == 2 and type(entry[0]) is int):
        return False
    command = entry[1]
    if not (isinstance(command, tuple) and command and isinstance(command[0], str)):
        return False
    if command[0] == "config":
        return len(command) == 2 and replicas_ok(command[1])
    if command[0] == "op":
        return (len(command) == 5 and isinstance(command[1], str) and type(command[2]) is int
                and type(command[3]) is int and isinstance(command[4], tuple))
    return command == ("noop",)

"""The replicated metadata table, run by a peer: its replica, its client, and the local clients' requests.

Every peer runs a `TableReplica`; only the members of the current replica set vote and hold the table (3,
fewer while the cluster is smaller), and the leader adds and replaces members from membership's list of
live peers. Every peer also runs one `TableClient`, which routes the operations of its local processes to
the leader and keeps a read cache fresh by subscription, so lookups rarely cross the network.

Whom to ask: replicas put the replica set they know in their peer's gossiped view (`view["table"]`); a peer
that knows no replica yet takes it from there.

Replica state is kept in memory only. That is safe here because a peer never comes back under the same id
*without its memory*: a restarted peer is a new node, which the leader adds as a fresh member (and catches
up), while its old id is replaced as dead; a peer that was only paused (SIGSTOP) comes back with its state
intact, which Raft handles like any slow replica. Losing a majority of the replicas at once loses the table
(see docs/architecture.md).
"""

from __future__ import annotations

import logging
import random

from p2pcompute.net.effects import Send, Timer
from p2pcompute.runtime import messages as rm
from p2pcompute.table import messages as tm
from p2pcompute.table.client import TableClient
from p2pcompute.table.effects import Persist, ReplicaSetChanged, Reply, TableEvent
from p2pcompute.table.raft import TableReplica

log = logging.getLogger("p2pcompute.table")

_TO_REPLICA = (tm.RequestVote, tm.RequestVoteReply, tm.AppendEntries, tm.AppendEntriesReply, tm.InstallSnapshot,
               tm.InstallSnapshotReply, tm.ClientRequest, tm.Subscribe)
_TO_CLIENT = (tm.ClientReply, tm.TableUpdate, tm.TableSnapshot)


class TableService:
    def __init__(self, peer, now_ns: int, bootstrap: bool):
        self.peer = peer
        rng = random.Random()
        self.replica = TableReplica(peer.peer_id, peer.addr, rng=rng, now_ns=now_ns, bootstrap=bootstrap)
        known = {peer.peer_id: peer.addr} if bootstrap else {}
        self.client = TableClient(f"{peer.peer_id}-table", peer.addr, rng=random.Random(rng.random()),
                                  now_ns=now_ns, replicas=known)
        self.known_replicas: dict[str, str] = dict(known)
        self.leader: tuple[str, str] | None = None
        self._waiting: dict[int, object] = {}  # client request id -> (reply_to, caller's id) or a callback
        # Names claimed through this peer, by the local process that claimed them: released if it dies.
        self._claims: dict[str, list[tuple[str, dict]]] = {}
        self._alive: dict[str, str] = {}
        self.handles = _TO_REPLICA + _TO_CLIENT + (rm.TableOp,)
        self.run(self.replica.on_tick(now_ns))
        # Keep a cache of the table fresh by subscription: most reads then never leave this peer.
        self.run(self.client.subscribe(now_ns))

    # ---- inputs -------------------------------------------------------------------------------------

    def dispatch(self, now_ns: int, sender_addr: str | None, msg) -> None:
        t = type(msg)
        if t is rm.TableOp:
            self.submit(now_ns, msg.reply_to, msg.request_id, msg.op, msg.linearizable)
        elif sender_addr is None:
            return
        elif t in _TO_REPLICA:
            self.run(self.replica.on_message(now_ns, sender_addr, msg))
        else:
            self.run(self.client.on_message(now_ns, sender_addr, msg))

    def submit(self, now_ns: int, reply_to: str, request_id: str, op, linearizable: bool) -> None:
        op = tuple(op) if isinstance(op, list) else op
        try:
            rid, effects = self.client.submit(now_ns, op, linearizable=linearizable)
        except Exception as exc:  # a malformed operation from a local client: its fault, say so
            self.peer._send(reply_to, rm.TableOpReply(request_id, False, None, f"bad operation: {exc}"))
            return
        if op[0] == "claim":
            proc = self.peer.proc_at(reply_to)
            self._waiting[rid] = _Claim(reply_to, request_id, proc, op[1], op[2])
        else:
            self._waiting[rid] = (reply_to, request_id)
        self.run(effects)

    def call(self, now_ns: int, op: tuple, then=None) -> None:
        """An operation of the peer's own (cleanup after deaths); `then(ok, result)` gets the outcome."""
        try:
            rid, effects = self.client.submit(now_ns, op)
        except Exception:
            log.exception("bad table operation %r", op)
            return
        self._waiting[rid] = then or _ignore
        self.run(effects)

    # ---- cleanup after deaths -----------------------------------------------------------------------

    def on_process_died(self, now_ns: int, proc_id: str, kind: str, job_id: str, clean: bool) -> None:
        for key, record in self._claims.pop(proc_id, []):
            self.call(now_ns, ("release", key, record))
        if kind == "driver" and job_id:
            self.call(now_ns, ("job_update", job_id, {"state": "SUCCEEDED" if clean else "FAILED",
                                                      "end_time": _wall()}))

    def on_peer_died(self, now_ns: int, peer_id: str) -> None:
        """Names owned by processes of a dead peer are released — by the leader's peer, once."""
        if not self.replica.is_leader():
            return
        prefix = peer_id + "-"

        def release(ok, names):
            if not ok or not isinstance(names, list):
                return
            for entry in names:
                key, record = entry[0], entry[1]
                if isinstance(record, dict) and str(record.get("actor_id", "")).startswith(prefix):
                    self.call(self.peer.now(), ("release", key, record))

        self.call(now_ns, ("list_names", ""), release)

    def on_tick(self, now_ns: int, alive: dict[str, str], views: list) -> None:
        if alive != self._alive:
            self._alive = dict(alive)
            self.run(self.replica.on_members(now_ns, alive))
        if not self.known_replicas or (self.leader is None and self.replica.role != "leader"):
            self._learn_from_views(now_ns, views)
        self.run(self.replica.on_tick(now_ns))
        self.run(self.client.on_tick(now_ns))

    def _learn_from_views(self, now_ns: int, views: list) -> None:
        for view in views:
            info = view.get("table") if isinstance(view, dict) else None
            if isinstance(info, dict) and isinstance(info.get("replicas"), dict) and info["replicas"]:
                replicas = {k: v for k, v in info["replicas"].items() if isinstance(k, str) and isinstance(v, str)}
                leader = info.get("leader")
                hint = (leader, replicas[leader]) if isinstance(leader, str) and leader in replicas else None
                self.known_replicas = replicas
                self.leader = hint
                self.run(self.client.update_replicas(now_ns, replicas, hint))
                return

    def view_info(self) -> dict | None:
        """What this peer gossips about the table, if it is a replica or knows the set."""
        if not self.known_replicas:
            return None
        return {"replicas": dict(self.known_replicas), "leader": self.leader[0] if self.leader else None}

    # ---- effects ------------------------------------------------------------------------------------

    def run(self, effects: list) -> None:
        peer = self.peer
        for eff in effects:
            t = type(eff)
            if t is Send:
                peer._send(eff.to, eff.msg)
            elif t is Timer:
                peer._deadline_ns = min(peer._deadline_ns, eff.at_ns)
            elif t is Reply:
                waiter = self._waiting.pop(eff.request_id, None)
                if waiter is None:
                    continue
                if callable(waiter):
                    waiter(eff.ok, eff.result)
                    continue
                if type(waiter) is _Claim:
                    if eff.ok and isinstance(eff.result, (list, tuple)) and eff.result and eff.result[0]:
                        self._claims.setdefault(waiter.proc, []).append((waiter.key, waiter.record))
                    waiter = (waiter.reply_to, waiter.request_id)
                reply_to, request_id = waiter
                peer._send(reply_to, rm.TableOpReply(request_id, eff.ok, eff.result, eff.error or None))
            elif t is ReplicaSetChanged:
                self.known_replicas = dict(eff.replicas)
                self.leader = (eff.leader_id, eff.leader_addr) if eff.leader_id and eff.leader_addr else None
                self.run(self.client.update_replicas(peer.now(), eff.replicas, self.leader))
            elif t is Persist or t is TableEvent:
                pass  # in memory (see the module docstring); cache events need no action here

    def status(self) -> dict:
        return {"role": self.replica.role, "term": self.replica.term, "replicas": sorted(self.known_replicas),
                "leader": self.leader[0] if self.leader else None, "commit_index": self.replica.commit_index}


class _Claim:
    __slots__ = ("reply_to", "request_id", "proc", "key", "record")

    def __init__(self, reply_to: str, request_id: str, proc: str, key: str, record):
        self.reply_to, self.request_id, self.proc, self.key, self.record = reply_to, request_id, proc, key, record


def _ignore(ok, result) -> None:
    pass


def _wall() -> float:
    import time
    return time.time()

"""State reports: each peer answers for its own processes; whoever asks merges the answers.

A peer keeps the finished task attempts its workers report (`TaskEvents`), newest last, bounded. On a
`StateRequest` it asks each local process for its part (`ProcStateRequest`: tasks it owns or runs, actors it
owns or hosts, user metrics) and, for a cluster-wide report, every other peer for theirs; it answers with
whatever arrived within `WAIT_S`, naming who did not answer (a dead or stuck process must not hold the
report hostage). Nothing is stored centrally: what a peer forgets (beyond `EVENTS_MAX`, or when it dies)
is gone, as with Ray's bounded task event buffers.

It also counts what the peer's metrics report (tasks finished and failed by kind, membership changes).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from p2pcompute.runtime import messages as rm

WAIT_S = 3.0
EVENTS_MAX = 20_000


class _Gather:
    __slots__ = ("reply_to", "request_id", "what", "options", "deadline", "waiting_procs", "waiting_peers",
                 "procs", "peers")

    def __init__(self, reply_to: str, request_id: str, what: str, options: dict):
        self.reply_to = reply_to
        self.request_id = request_id
        self.what = what
        self.options = options
        self.deadline = time.monotonic() + WAIT_S
        self.waiting_procs: set[str] = set()
        self.waiting_peers: set[str] = set()
        self.procs: dict[str, dict] = {}
        self.peers: list[dict] = []


class StateReports:
    def __init__(self, peer):
        self.peer = peer
        self.events: OrderedDict[str, dict] = OrderedDict()
        self.counters: dict[str, int] = {}
        self.gathers: dict[str, _Gather] = {}
        self._seq = 0
        self._lease_names = _lease_counter_names()
        self._leader = None  # the table leader last seen, to count changes
        self.handles = (rm.TaskEvents, rm.StateRequest, rm.StateReply, rm.ProcStateReply)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def count_lease(self, effects: list) -> None:
        """Count the lease decisions among a core's effects (grants, spillbacks, ...)."""
        names = self._lease_names
        counters = self.counters
        for eff in effects:
            name = names.get(type(getattr(eff, "msg", None)))
            if name is not None:
                counters[name] = counters.get(name, 0) + 1

    def dispatch(self, sender: str, msg) -> None:
        t = type(msg)
        if t is rm.TaskEvents:
            self._on_events(msg)
        elif t is rm.StateRequest:
            self._start(msg)
        elif t is rm.ProcStateReply:
            g = self.gathers.get(msg.request_id)
            if g is not None and msg.proc_id in g.waiting_procs:
                g.waiting_procs.discard(msg.proc_id)
                g.procs[msg.proc_id] = msg.data if isinstance(msg.data, dict) else {}
                self._maybe_finish(msg.request_id)
        elif t is rm.StateReply:
            g = self.gathers.get(msg.request_id)
            if g is not None and sender in g.waiting_peers:
                g.waiting_peers.discard(sender)
                g.peers.extend(p for p in msg.peers if isinstance(p, dict))
                self._maybe_finish(msg.request_id)

    def _on_events(self, msg: rm.TaskEvents) -> None:
        events = self.events
        for ev in msg.events if isinstance(msg.events, list) else ():
            if not isinstance(ev, dict) or not isinstance(ev.get("task_id"), str):
                continue
            # A retried task keeps its id: the latest attempt is the one to show.
            events.pop(ev["task_id"], None)
            events[ev["task_id"]] = ev
            self.count(f"tasks_{str(ev.get('state', '?')).lower()}:{ev.get('kind', 'task')}")
        while len(events) > EVENTS_MAX:
            events.popitem(last=False)

    def _start(self, msg: rm.StateRequest) -> None:
        self._seq += 1
        gid = f"{self.peer.peer_id}-st{self._seq}"
        g = _Gather(msg.reply_to, msg.request_id, msg.what, msg.options if isinstance(msg.options, dict) else {})
        self.gathers[gid] = g
        for proc in self.peer.processes.procs.values():
            if proc.addr and proc.kind != "keeper":
                g.waiting_procs.add(proc.proc_id)
                self.peer.send(proc.addr, rm.ProcStateRequest(gid, self.peer.addr, msg.what))
        if msg.cluster:
            for member in self.peer.other_peers():
                g.waiting_peers.add(member.peer_id)
                self.peer.send(member.addr, rm.StateRequest(gid, self.peer.addr, msg.what, False, g.options))
        self._maybe_finish(gid)

    def _maybe_finish(self, gid: str, force: bool = False) -> None:
        g = self.gathers.get(gid)
        if g is None or (not force and (g.waiting_procs or g.waiting_peers)):
            return
        del self.gathers[gid]
        report = {"peer": self.peer.peer_id, "processes": g.procs, "unanswered": sorted(g.waiting_procs),
                  "unanswered_peers": sorted(g.waiting_peers)}
        if g.what == "tasks":
            since = g.options.get("since_ns", 0)
            since = since if isinstance(since, int) else 0
            name = g.options.get("name")
            # Filtering here, not at the asker, keeps a narrow question cheap on a peer with a long history.
            report["events"] = [ev for ev in self.events.values() if ev.get("end_ns", 0) >= since
                                and (name is None or ev.get("name") == name)]
        elif g.what == "metrics":
            report["peer_metrics"] = self.peer_metrics()
        self.peer.send(g.reply_to, rm.StateReply(g.request_id, [report] + g.peers))

    def peer_metrics(self) -> dict:
        """The peer's own numbers, as plain data (see dashboard/metrics_text.py for their names)."""
        p = self.peer
        lease = p.lease
        members = p.membership.members().values() if p.membership is not None else ()
        by_state: dict[str, int] = {}
        for m in members:
            by_state[m.state] = by_state.get(m.state, 0) + 1
        table = p.table.status() if hasattr(p, "table") else {}
        return {"counters": dict(self.counters), "queued_lease_requests": len(lease.waiting),
                "leases": len(lease.leases), "workers": len(lease.workers),
                "idle_workers": sum(1 for w in lease.workers.values() if w.lease_id is None),
                "store_used_bytes": p.objects.used, "store_capacity_bytes": p.objects.capacity,
                "store_spilled_bytes": p.objects.spilled_bytes, "store_objects": len(p.objects.in_memory),
                "store_spilled_objects": len(p.objects.spilled), "members_by_state": by_state,
                "resources_total": dict(lease.total), "resources_available": dict(lease.available),
                "table_role": (table or {}).get("role", ""), "task_events_kept": len(self.events),
                "processes": len(p.processes.procs), "uptime_s": time.time() - p.started_at,
                "transfer_bytes_sent": getattr(p.transfers, "bytes_sent", 0),
                "transfer_bytes_received": getattr(p.transfers, "bytes_received", 0),
                "transfers_in_flight": len(getattr(p.transfers, "transfers", ()) or ())}

    def on_tick(self) -> None:
        leader = getattr(getattr(self.peer, "table", None), "leader", None)
        if leader != self._leader:
            if leader is not None and self._leader is not None:
                self.count("table_leader_changes")
            self._leader = leader if leader is not None else self._leader
        now = time.monotonic()
        for gid, g in list(self.gathers.items()):
            if now > g.deadline:
                self._maybe_finish(gid, force=True)


def _lease_counter_names() -> dict:
    from p2pcompute.lease import messages as lm
    return {lm.LeaseGranted: "lease_grants", lm.LeaseSpillback: "lease_spillbacks",
            lm.LeaseRejected: "lease_rejections", lm.LeaseRevoked: "lease_revocations"}

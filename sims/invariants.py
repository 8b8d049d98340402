"""The checks: each keeps its own record of what happened, independent of the cores it judges.

- `Violations` collects what broke, per invariant, with the simulated time; a run is good when it is empty.
- `LeaseAudit` rebuilds every peer's leases from the messages alone — a `RequestLease` arriving gives the
  shape, a `LeaseGranted` leaving grants it, a `ReturnLease` arriving, a worker dying or the holder's death
  being handled ends it — and checks at every grant that the peer's leases fit in its capacity and that no
  worker is held twice. It never asks the lease core what it holds (the core's own `check_invariants` is
  also called, as a second opinion).
- `TaskLedger` knows every submitted task and how it ended; at the end each task of a live owner must have
  finished or failed with an error the API allows.
- `DetectionTracker` times failure detection: from a crash until every peer that was up at the time has
  marked the crashed peer dead (or learned its restarted successor).

Reference and name checks live with their workloads (`workloads/dag.py`, `workloads/names.py`).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

# The invariants every report lists, in order, with what each one means.
INVARIANTS = {
    "lease_capacity": "no peer leases beyond its capacity, and no worker is leased twice at once",
    "lease_accounting": "each lease core's own accounting balances (LeaseCore.check_invariants)",
    "leases_die_with_holder": "after the quiet period no live peer holds a lease for a dead process",
    "tasks_finish": "every submitted task finished, or failed with an error the API allows",
    "refs_safe": "no object is freed while a live process can still reach it",
    "refs_not_lost": "every object reachable from a live owner is present (or being rebuilt) at the end",
    "actor_order": "each caller's calls to an actor run in the order it sent them",
    "names_once": "a name is claimed at most once; every claim agrees on its holder",
    "table_agreement": "after the quiet period the table's replicas agree (one leader, same state)",
    "membership_agreement": "after the last fault and a quiet period all live peers agree on membership",
    "encodable": "every message the cores send can be encoded by the real codec",
}

# ActorUnavailableError: an actor call lost in flight when its actor restarted, with no max_task_retries left.
ALLOWED_TASK_ERRORS = ("OwnerDiedError", "WorkerCrashedError", "ActorDiedError", "ActorUnavailableError",
                       "ObjectLostError")

_MAX_PER_INVARIANT = 20


@dataclass
class Violation:
    invariant: str
    at_ns: int
    message: str


class Violations:
    def __init__(self, engine) -> None:
        self.engine = engine
        self.items: list[Violation] = []
        self.counts: dict[str, int] = {}

    def add(self, invariant: str, message: str) -> None:
        assert invariant in INVARIANTS, invariant
        n = self.counts[invariant] = self.counts.get(invariant, 0) + 1
        if n <= _MAX_PER_INVARIANT:
            self.items.append(Violation(invariant, self.engine.now, message))
            self.engine.log.add_text(f"violation {invariant} {message}")

    def __bool__(self) -> bool:
        return bool(self.items)

    def of(self, invariant: str) -> list[Violation]:
        return [v for v in self.items if v.invariant == invariant]


# ---- leases ----------------------------------------------------------------------------------------------

class _PeerLeases:
    __slots__ = ("peer_id", "total", "used", "leases", "worker_lease", "requests", "of_dead", "dead")

    def __init__(self, peer_id: str, total: dict) -> None:
        self.peer_id = peer_id
        self.total = dict(total)
        self.used: dict[str, int] = {}
        self.leases: dict[str, tuple[str, dict, str]] = {}  # lease id -> (worker id, shape, holder id)
        self.worker_lease: dict[str, str] = {}  # worker id -> lease id
        self.requests: dict[str, tuple[dict, str]] = {}  # request id -> (shape, holder id), from RequestLease
        self.of_dead: dict[str, tuple[dict, str]] = {}  # requests dropped because their holder died
        self.dead: set[str] = set()  # holders (process ids, "<peer id>-" prefixes) whose death it handled


class LeaseAudit:
    """Leases per peer incarnation, rebuilt from the messages. `key` is the SimPeer object."""

    def __init__(self, violations: Violations) -> None:
        self.violations = violations
        self._peers: dict[int, _PeerLeases] = {}
        self.grants = 0
        self.max_utilisation = 0.0

    def peer_started(self, key: int, peer_id: str, total: dict) -> None:
        self._peers[key] = _PeerLeases(peer_id, total)

    def peer_gone(self, key: int) -> None:
        self._peers.pop(key, None)

    def on_request(self, key: int, request_id: str, shape: dict, holder_id: str) -> None:
        p = self._peers.get(key)
        if p is not None and request_id not in p.requests:
            p.requests[request_id] = (dict(shape), holder_id)

    def on_request_over(self, key: int, request_id: str) -> None:
        """The request left this peer without a grant: spilled back or cancelled."""
        p = self._peers.get(key)
        if p is not None:
            p.requests.pop(request_id, None)

    def on_grant(self, key: int, request_id: str, lease_id: str, worker_id: str) -> None:
        p = self._peers.get(key)
        if p is None:
            return
        self.grants += 1
        req = p.requests.pop(request_id, None)
        if req is None:
            req = p.of_dead.pop(request_id, None)
            if req is None:
                self.violations.add("lease_capacity", f"peer {p.peer_id} granted lease {lease_id} for request "
                                                      f"{request_id}, which never arrived there (or was granted before)")
                return
        shape, holder = req
        if holder in p.dead or holder.split("-", 1)[0] + "-" in p.dead:
            self.violations.add("leases_die_with_holder", f"peer {p.peer_id} granted lease {lease_id} on {worker_id} "
                                                          f"to {holder}, whose death it had already handled")
        other = p.worker_lease.get(worker_id)
        if other is not None:
            self.violations.add("lease_capacity", f"peer {p.peer_id}: worker {worker_id} leased twice at once "
                                                  f"({other} to {p.leases[other][2]}, {lease_id} to {holder})")
        p.worker_lease[worker_id] = lease_id
        p.leases[lease_id] = (worker_id, shape, holder)
        used = p.used
        for name, units in shape.items():
            used[name] = used.get(name, 0) + units
            if used[name] > p.total.get(name, 0):
                self.violations.add("lease_capacity", f"peer {p.peer_id}: leases hold {used[name] / 10_000:g} "
                                                      f"{name} > its capacity {p.total.get(name, 0) / 10_000:g} "
                                                      f"(granting {lease_id} to {holder})")
        cpu_total = p.total.get("CPU", 0)
        if cpu_total:
            self.max_utilisation = max(self.max_utilisation, used.get("CPU", 0) / cpu_total)

    def _end(self, p: _PeerLeases, lease_id: str) -> None:
        worker_id, shape, _ = p.leases.pop(lease_id)
        if p.worker_lease.get(worker_id) == lease_id:
            del p.worker_lease[worker_id]
        for name, units in shape.items():
            p.used[name] -= units

    def on_return(self, key: int, lease_id: str) -> None:
        p = self._peers.get(key)
        if p is not None and lease_id in p.leases:
            self._end(p, lease_id)

    def on_worker_gone(self, key: int, worker_id: str) -> None:
        p = self._peers.get(key)
        if p is not None:
            lease_id = p.worker_lease.get(worker_id)
            if lease_id is not None:
                self._end(p, lease_id)

    def on_holders_dead(self, key: int, dead: str) -> None:
        """The peer handled the death of process `dead`, or of every process of a peer (`dead` is then a
        "<peer id>-" prefix): their leases end, their queued requests go."""
        p = self._peers.get(key)
        if p is not None:
            p.dead.add(dead)
            is_dead = (lambda holder: holder.startswith(dead)) if dead.endswith("-") else dead.__eq__
            for lease_id in [lid for lid, (_, _, holder) in p.leases.items() if is_dead(holder)]:
                self._end(p, lease_id)
            for rid in [rid for rid, (_, holder) in p.requests.items() if is_dead(holder)]:
                p.of_dead[rid] = p.requests.pop(rid)
            if len(p.of_dead) > 4096:
                for rid in list(p.of_dead)[:2048]:
                    del p.of_dead[rid]

    def on_holders_back(self, key: int, prefix: str) -> None:
        """Membership says a peer declared dead is alive again: its processes may hold leases again."""
        p = self._peers.get(key)
        if p is not None:
            p.dead.discard(prefix)

    def holder_of(self, key: int, worker_id: str) -> str | None:
        """Who holds `worker_id`'s lease now, per the messages (None: nobody)."""
        p = self._peers.get(key)
        if p is None:
            return None
        lease_id = p.worker_lease.get(worker_id)
        return p.leases[lease_id][2] if lease_id is not None else None

    def holders(self, key: int) -> list[str]:
        p = self._peers.get(key)
        return [] if p is None else [holder for _, _, holder in p.leases.values()]


# ---- tasks -----------------------------------------------------------------------------------------------

@dataclass
class TaskRecord:
    task_id: str
    owner: str  # the driver's process id
    kind: str
    submit_ns: int
    service_ns: int
    finish_ns: int | None = None
    error: str | None = None
    attempts: int = 1
    where: str = ""  # the last worker it was pushed to, for messages
    cpu: int = 0  # CPU units it asks for


class TaskLedger:
    """Tasks not yet ended, by id, and arrays of the ended ones' times (a million records would not fit)."""

    def __init__(self) -> None:
        self.pending: dict[str, TaskRecord] = {}
        self.submitted_total = 0
        self.finished = 0
        self.failed: dict[str, int] = {}
        self.bad_errors: list[str] = []
        self.starved = 0  # still waiting at the end for resources that actors hold
        # Per finished task: when it finished, its time in system, its service time (ns).
        self.finish_ns = array("q")
        self.latency_ns = array("q")
        self.service_ns = array("q")

    def submitted(self, task_id: str, owner: str, kind: str, now: int, service_ns: int) -> TaskRecord:
        rec = self.pending[task_id] = TaskRecord(task_id, owner, kind, now, service_ns)
        self.submitted_total += 1
        return rec

    def finish(self, rec: TaskRecord, now: int) -> None:
        if self.pending.pop(rec.task_id, None) is None:
            return
        rec.finish_ns = now
        self.finished += 1
        self.finish_ns.append(now)
        self.latency_ns.append(now - rec.submit_ns)
        self.service_ns.append(rec.service_ns)

    def fail(self, rec: TaskRecord, error: str, now: int) -> None:
        if self.pending.pop(rec.task_id, None) is None:
            return
        rec.error = error
        rec.finish_ns = now
        self.failed[error] = self.failed.get(error, 0) + 1
        if error not in ALLOWED_TASK_ERRORS:
            self.bad_errors.append(f"task {rec.task_id} failed with {error}, which the API does not allow here")

    def check(self, violations: Violations, live_owner, starved=lambda rec: False) -> None:
        """`starved(rec)`: the task cannot run while the cluster's actors keep their leases, which the API
        allows (it waits for resources); such tasks are counted, not failed."""
        stuck = [rec for rec in self.pending.values() if live_owner(rec.owner)]
        self.starved = sum(1 for rec in stuck if starved(rec))
        stuck = [rec for rec in stuck if not starved(rec)]
        for rec in stuck[:_MAX_PER_INVARIANT]:
            violations.add("tasks_finish", f"task {rec.task_id} ({rec.kind}) of live owner {rec.owner}, submitted at "
                                           f"{rec.submit_ns / 1e9:.3f}s, never finished (attempts {rec.attempts}, "
                                           f"last pushed to {rec.where or 'nobody'})")
        if len(stuck) > _MAX_PER_INVARIANT:
            violations.add("tasks_finish", f"... and {len(stuck) - _MAX_PER_INVARIANT} more unfinished tasks")
        for text in self.bad_errors[:_MAX_PER_INVARIANT]:
            violations.add("tasks_finish", text)


# ---- failure detection -----------------------------------------------------------------------------------

@dataclass
class _Crash:
    peer_id: str
    gen: int
    at_ns: int
    waiting: dict  # observer peer id -> None (a dict for a deterministic order)
    first_ns: int | None = None
    last_ns: int | None = None


@dataclass
class DetectionTracker:
    pending: dict = field(default_factory=dict)  # crashed peer id -> _Crash
    times_ns: list = field(default_factory=list)  # crash -> every observer knew
    first_ns: list = field(default_factory=list)  # crash -> the first observer knew
    false_dead: int = 0  # a peer that was up was declared dead by someone
    unfinished: int = 0

    def crashed(self, peer_id: str, gen: int, now: int, observers: list[str]) -> None:
        self.pending[peer_id] = _Crash(peer_id, gen, now, dict.fromkeys(o for o in observers if o != peer_id))
        if not self.pending[peer_id].waiting:
            del self.pending[peer_id]

    def observed(self, peer_id: str, observer: str, now: int) -> None:
        c = self.pending.get(peer_id)
        if c is None or observer not in c.waiting:
            return
        del c.waiting[observer]
        c.last_ns = now - c.at_ns
        if c.first_ns is None:
            c.first_ns = c.last_ns
            self.first_ns.append(c.first_ns)
        if not c.waiting:
            self.times_ns.append(now - c.at_ns)
            del self.pending[peer_id]

    def observer_gone(self, observer: str) -> None:
        """An observer crashed or left: it will never say anything again."""
        for peer_id in list(self.pending):
            c = self.pending[peer_id]
            c.waiting.pop(observer, None)
            if not c.waiting:
                if c.last_ns is not None:
                    self.times_ns.append(c.last_ns)  # everyone left who could know, knew
                del self.pending[peer_id]

    def finish(self) -> None:
        self.unfinished = len(self.pending)

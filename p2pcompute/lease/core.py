"""The lease core: grants this peer's workers to submitters, or points them elsewhere.

Theory of operation
-------------------
A submitter asks for a *lease*: a worker of this peer plus the resources of a shape, held until it returns
it. Resources are reserved at grant time, so no peer ever leases beyond its capacity, and a worker is held by
at most one lease at a time.

A request that is not already spilled may be sent elsewhere: if the shape fits nowhere here, or this peer is
loaded past `spread_threshold` and another peer with room is less loaded (power of two choices over the
gossiped views), the reply is a `LeaseSpillback`. It names every sampled peer, least loaded first, and the
submitter asks them all at once, taking the first grant and cancelling the rest (late binding, as Sparrow
does): in a busy cluster views are gossip seconds old, older than a task, so they can say where to look but
not which peer frees a worker first — the peers' queues decide that. A full peer whose sampled views all look
full spills to peers that fit at all rather than queue the request behind its own leases. A spilled request
is granted or queued where it lands — never spilled again — so two stale views cannot bounce a request
forever.

Granting needs an idle worker of the request's job (or a fresh one); if none exists the resources are
reserved and a worker is started (`StartWorker`), and the grant goes out when it registers. Queued requests
are served first-come, first-served as resources free up; a queued request that could run elsewhere is
spilled on the next tick unless it was spilled already.

Leases die with their holder: `on_process_died` / `on_peer_died` reclaim every lease the dead process or
peer held, after dropping its queued requests (else returning a lease would grant one of them on the spot).
The dead are remembered: a request that arrives after its holder's death (sent before it, held up by TCP
across a partition) is refused rather than granted to a holder nobody would reclaim it from. A peer that
membership reports alive again (`on_peer_alive`: it refuted a false death) is served again; its processes
that really died stay dead. A worker blocked in `get` lends its CPUs back until it unblocks (so nested
tasks cannot deadlock a full peer); the lease is briefly oversubscribed when it resumes, as in Ray.

Pure: no I/O, no clock reads; randomness only through `rng`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from p2pcompute.lease import policy, resources
from p2pcompute.lease.messages import (CancelLeaseRequest, LeaseGranted, LeaseRejected, LeaseRevoked,
                                       LeaseSpillback, LeaseWanted, RequestLease, ReturnLease, WorkerBlocked,
                                       WorkerUnblocked)
from p2pcompute.net.effects import Send, Timer


_MAX_DEAD_PROCS = 100_000  # enough for hours of churn; a forgotten one costs at most one stray lease


@dataclass(frozen=True)
class LeaseConfig:
    # Pack work on this peer until this share of its CPUs is busy, then prefer less loaded peers.
    spread_threshold: float = 0.5
    # How many peers a spillback samples (power of d choices).
    choices: int = 2
    # Workers beyond the CPU count that may run at once (blocked workers lend their CPU).
    max_workers_extra: int = 64
    # An idle worker beyond the pool size is stopped after this long.
    idle_worker_ttl_ms: int = 10_000
    # How often queued requests are reconsidered for spillback.
    requeue_interval_ms: int = 100
    # Ask idle holders to give leases back after a request waited this long.
    lease_wanted_after_ms: int = 20
    # A worker that does not register in this long is considered failed to start.
    worker_start_timeout_ms: int = 60_000
    # A request asking the peer that holds most of its arguments waits here this long for a worker before
    # it may go elsewhere: moving the task is cheaper than moving its data only once the wait gets long.
    locality_wait_ms: int = 1_000
    # Arguments smaller than this do not make a peer worth waiting for.
    locality_min_bytes: int = 1 << 20
    # Up to this many known peers a spill decision looks at all of them; beyond, it samples `sample_tries`
    # at random and keeps those that fit, so a decision costs O(choices), not O(peers), in large clusters.
    scan_all_below: int = 64
    sample_tries: int = 8
    # Queued requests reconsidered for spillback per tick, oldest first: a long queue costs a bounded tick.
    respill_per_tick: int = 256


@dataclass(frozen=True, slots=True)
class StartWorker:
    """Effect: start a worker process; it will register with `on_worker_registered`."""

    worker_id: str
    job_id: str


@dataclass(frozen=True, slots=True)
class StopWorker:
    """Effect: stop a worker process (idle reaping, killed actor, dead holder's actor)."""

    worker_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Infeasible:
    """Effect: a request fits no live peer; warn the user once per shape."""

    request_id: str
    holder_addr: str
    shape: dict
    cluster_total: dict


@dataclass(slots=True)
class _Worker:
    worker_id: str
    job_id: str | None      # None until the first lease binds it to a job
    addr: str | None = None  # None while starting
    ctl_addr: str = ""
    state: str = "starting"  # starting | idle | leased | dead
    lease_id: str | None = None
    idle_since_ns: int = 0
    started_ns: int = 0
    blocked: bool = False


@dataclass(slots=True)
class _Lease:
    lease_id: str
    request: RequestLease
    worker_id: str
    shape: dict
    granted_ns: int
    wanted_sent: bool = False


@dataclass(slots=True)
class _Waiting:
    request: RequestLease
    since_ns: int
    worker_id: str | None = None  # set when resources are reserved and a worker is starting for it
    infeasible: bool = False


class LeaseCore:
    def __init__(self, peer_id: str, peer_addr: str, total: dict, *, config: LeaseConfig | None = None,
                 rng: random.Random | None = None, pool_size: int | None = None):
        self.peer_id = peer_id
        self.peer_addr = peer_addr
        self.config = config or LeaseConfig()
        # Each peer samples spill targets with its own sequence (the runtime passes an OS-seeded rng): one
        # shared default sequence would make every peer pick the same targets, herding instead of spreading.
        self.rng = rng or random.Random(f"lease:{peer_id}")
        self.total = dict(total)
        self.available = dict(total)
        cpus = total.get(resources.CPU, 0) // resources.UNIT
        self.pool_size = pool_size if pool_size is not None else max(1, cpus)
        self.max_workers = self.pool_size + self.config.max_workers_extra
        self.workers: dict[str, _Worker] = {}
        self.leases: dict[str, _Lease] = {}
        self.waiting: list[_Waiting] = []
        self._by_request: dict[str, _Waiting] = {}
        # Other peers as last heard through gossip; refreshed by set_views (or put_view / drop_view). The
        # ids are also kept in a list, for sampling in O(1).
        self.views: dict[str, policy.PeerView] = {}
        self._view_ids: list[str] = []
        self._view_pos: dict[str, int] = {}
        self._seq = 0
        self._next_requeue_ns = 0
        self._warned_shapes: set = set()
        self._spread_next = 0  # round robin over peers for the SPREAD strategy
        self.granted_total = 0
        self.spilled_total = 0
        # Holders whose death was handled. Process ids are "<peer id>-<kind><n>", so a dead peer covers all
        # of its processes; dead processes are kept up to a bound (oldest forgotten first).
        self._dead_peers: set[str] = set()
        self._dead_procs: dict[str, None] = {}

    # ---- identities ---------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{self.peer_id}-{prefix}{self._seq}"

    # ---- views of the cluster -----------------------------------------------------------------------

    def set_views(self, views: list[policy.PeerView]) -> None:
        # Our own PeerView objects, sharing the gossiped dicts: `_spill` replaces a view's `available`
        # with a lowered copy, never changes the dict, which belongs to the membership core.
        self.views = {v.peer_id: policy.PeerView(v.peer_id, v.addr, v.total, v.available, v.queued)
                      for v in views if v.peer_id != self.peer_id}
        self._view_ids = list(self.views)
        self._view_pos = {pid: i for i, pid in enumerate(self._view_ids)}

    def put_view(self, view: policy.PeerView) -> None:
        """Add or replace one peer's view. The object becomes the core's (a spill replaces its `available`)."""
        if view.peer_id == self.peer_id:
            return
        if view.peer_id not in self._view_pos:
            self._view_pos[view.peer_id] = len(self._view_ids)
            self._view_ids.append(view.peer_id)
        self.views[view.peer_id] = view

    def drop_view(self, peer_id: str) -> None:
        self.views.pop(peer_id, None)
        pos = self._view_pos.pop(peer_id, None)
        if pos is not None:
            last = self._view_ids.pop()
            if last != peer_id:
                self._view_ids[pos] = last
                self._view_pos[last] = pos

    def _candidates(self, shape: dict, now_free: bool = True) -> list[policy.PeerView]:
        """Peers where `shape` fits (in free resources, or at all): every one in a small cluster; in a large
        one, those among a few sampled at random — enough for power-of-d choices without an O(N) scan."""
        field = "available" if now_free else "total"
        ids, views = self._view_ids, self.views
        if len(ids) <= self.config.scan_all_below:
            return [v for v in views.values() if resources.fits(shape, getattr(v, field))]
        found: dict[str, policy.PeerView] = {}
        n, randrange = len(ids), self.rng.randrange
        for _ in range(self.config.sample_tries):
            v = views[ids[randrange(n)]]
            if resources.fits(shape, getattr(v, field)):
                found[v.peer_id] = v
                if len(found) >= self.config.choices:
                    break
        if not found and not now_free:
            # A shape few peers can hold at all (say, GPUs): sampling would miss them, so look at every one.
            return [v for v in views.values() if resources.fits(shape, v.total)]
        return list(found.values())

    def local_view(self) -> dict:
        return {"total": dict(self.total), "available": dict(self.available), "queued": len(self.waiting)}

    def utilization(self) -> float:
        cpus = self.total.get(resources.CPU, 0)
        if cpus <= 0:
            return 1.0
        return (cpus - self.available.get(resources.CPU, 0)) / cpus

    def pending_demand(self) -> list[dict]:
        return [{"shape": w.request.shape, "holder": w.request.holder_id, "infeasible": w.infeasible}
                for w in self.waiting]

    # ---- messages -----------------------------------------------------------------------------------

    def on_message(self, now_ns: int, sender_id: str, msg) -> list:
        if isinstance(msg, RequestLease):
            return self.on_request_lease(now_ns, msg)
        if isinstance(msg, ReturnLease):
            return self.on_return_lease(now_ns, msg.lease_id, msg.kill)
        if isinstance(msg, CancelLeaseRequest):
            return self.on_cancel_request(now_ns, msg.request_id)
        if isinstance(msg, WorkerBlocked):
            return self.on_worker_blocked(now_ns, msg.worker_id)
        if isinstance(msg, WorkerUnblocked):
            return self.on_worker_unblocked(now_ns, msg.worker_id)
        return []

    def on_request_lease(self, now_ns: int, req: RequestLease) -> list:
        if req.request_id in self._by_request or not isinstance(req.shape, dict):
            return []  # a duplicate of a request we are already serving
        if self.holder_dead(req.holder_id):
            # Sent before its holder died: a lease nobody would ever give back. Refused, not dropped: if the
            # death was a false alarm not yet refuted here, the holder retries instead of waiting for its
            # request to time out.
            return [Send(req.holder_addr, LeaseRejected(req.request_id, f"peer {self.peer_id} saw the process "
                                                                        f"{req.holder_id} or its peer die", False))]
        if any(not isinstance(k, str) or not isinstance(v, int) or v < 0 for k, v in req.shape.items()):
            return [Send(req.holder_addr, LeaseRejected(req.request_id, "malformed resource shape", False))]
        targets = self._spill_targets(req)
        if targets:
            return [self._spill(req, targets)]
        if req.spilled > 0 and not self._fits_beside_actors(req.shape):
            # Sent here on a stale view, or by a peer that could only tell that we fit it in total: we never
            # fit it, or not while our actors live. Back to the submitter's own peer, which knows more (or
            # will wait for a peer that fits) — a retry there, never a loop.
            return [Send(req.holder_addr, LeaseRejected(req.request_id, f"peer {self.peer_id} cannot fit "
                                                                        f"{resources.describe(req.shape)}",
                                                        not resources.fits(req.shape, self.total)))]
        waiting = _Waiting(req, now_ns)
        if not resources.fits(req.shape, self.total):
            waiting.infeasible = True
        self.waiting.append(waiting)
        self._by_request[req.request_id] = waiting
        effects = self._dispatch(now_ns)
        if waiting.infeasible:
            effects += self._warn_infeasible(waiting)
        return effects

    def _fits_beside_actors(self, shape: dict) -> bool:
        """`shape` fits here once every lease but the actors' (held for their lives) is returned."""
        room = dict(self.total)
        for lease in self.leases.values():
            if lease.request.actor:
                resources.subtract(room, lease.shape)
        return resources.fits(shape, room)

    def _holds_its_data(self, req: RequestLease, waited_ns: int) -> bool:
        """This peer holds most of the request's argument bytes, and it has not waited too long for it."""
        locality = req.locality if isinstance(req.locality, dict) else {}
        here = locality.get(self.peer_id, 0)
        if not isinstance(here, int) or here < self.config.locality_min_bytes:
            return False
        if waited_ns > self.config.locality_wait_ms * 1_000_000:
            return False
        return all(not isinstance(v, int) or v <= here for v in locality.values())

    def _spread_target(self, req: RequestLease) -> policy.PeerView | None:
        """SPREAD places request after request on the next peer in turn (this one included), so a batch of
        tasks lands evenly whatever their length; a spilled request stays where it lands."""
        candidates = sorted([self.peer_id] + [v.peer_id for v in self.views.values()
                                              if resources.fits(req.shape, v.total)])
        if not resources.fits(req.shape, self.total):
            candidates.remove(self.peer_id)
        if not candidates:
            return None
        choice = candidates[self._spread_next % len(candidates)]
        self._spread_next += 1
        return None if choice == self.peer_id else self.views[choice]

    def _spill_targets(self, req: RequestLease, waited_ns: int = 0) -> list[policy.PeerView]:
        """Where to send `req` instead of serving it here — the first is the best guess, and the submitter
        asks them all at once — or [] to serve (or queue) it here."""
        if req.spilled > 0:
            return []
        if req.affinity is not None and req.affinity != self.peer_id:
            view = self.views.get(req.affinity)
            if view is not None and resources.fits(req.shape, view.total):
                return [view]
            if not req.soft:
                return []  # hard affinity to an unknown peer: wait here until it shows up or times out
        if req.affinity == self.peer_id:
            return []
        choices = self.config.choices
        if not resources.fits(req.shape, self.total):
            return policy.sample(self._candidates(req.shape), self.rng, choices) or \
                policy.sample(self._candidates(req.shape, now_free=False), self.rng, choices)
        fits_here = resources.fits(req.shape, self.available)
        if req.strategy == "SPREAD":
            target = self._spread_target(req) if waited_ns == 0 else None
            return [target] if target is not None else []
        if self._holds_its_data(req, waited_ns):
            return []  # wait for a worker here rather than move the data
        if fits_here and self.utilization() < self.config.spread_threshold:
            return []  # pack locally while lightly loaded
        sampled = policy.sample(self._candidates(req.shape), self.rng, choices)
        if not sampled and not fits_here:
            # Every view we sampled looks full, and so are we. Views are gossip, seconds old in a busy
            # cluster: waiting at peers picked at random, as many as we may, finds the worker that frees
            # first, where waiting here finds only ours.
            return policy.sample(self._candidates(req.shape, now_free=False), self.rng, choices)
        if not sampled or fits_here and policy.load_of(sampled[0]) >= self._load():
            return []
        return sampled

    def _spill(self, req: RequestLease, targets: list[policy.PeerView]) -> Send:
        self.spilled_total += 1
        # Until the next gossip about those peers, count what we just sent them, so the next spill prefers
        # others instead of herding everything onto the ones that looked emptiest. A copy: the dict we had is
        # the gossiped one.
        for target in targets:
            available = dict(target.available)
            resources.subtract(available, req.shape)
            target.available = available
        first = targets[0]
        return Send(req.holder_addr, LeaseSpillback(req.request_id, first.peer_id, first.addr,
                                                    tuple((v.peer_id, v.addr) for v in targets[1:])))

    def _load(self) -> float:
        return policy.load_of(policy.PeerView(self.peer_id, self.peer_addr, self.total, self.available,
                                              len(self.waiting)))

    def on_cancel_request(self, now_ns: int, request_id: str) -> list:
        waiting = self._by_request.get(request_id)
        if waiting is None:
            return []
        self._drop_waiting(waiting)
        return self._dispatch(now_ns)

    def _drop_waiting(self, waiting: _Waiting) -> None:
        self._by_request.pop(waiting.request.request_id, None)
        self.waiting.remove(waiting)
        if waiting.worker_id is not None:
            # Resources were reserved for a starting worker: give them back; the worker joins the pool.
            resources.add(self.available, waiting.request.shape)
            worker = self.workers.get(waiting.worker_id)
            if worker is not None:
                worker.lease_id = None

    def on_return_lease(self, now_ns: int, lease_id: str, kill: bool) -> list:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return []
        return self._end_lease(now_ns, lease, kill) + self._dispatch(now_ns)

    def _end_lease(self, now_ns: int, lease: _Lease, kill: bool) -> list:
        """Give a lease's resources back; its worker goes idle, or is stopped. No dispatch."""
        worker = self.workers.get(lease.worker_id)
        effects: list = []
        if worker is not None:
            if not worker.blocked:
                resources.add(self.available, lease.shape)
            else:
                resources.add(self.available, _non_cpu(lease.shape))
                worker.blocked = False
            worker.lease_id = None
            if kill or worker.state == "dead":
                worker.state = "dead"
                del self.workers[worker.worker_id]
                effects.append(StopWorker(worker.worker_id, "lease returned with kill"))
            else:
                worker.state = "idle"
                worker.idle_since_ns = now_ns
        else:
            resources.add(self.available, lease.shape)
        return effects

    def on_worker_blocked(self, now_ns: int, worker_id: str) -> list:
        worker = self.workers.get(worker_id)
        if worker is None or worker.blocked or worker.lease_id is None:
            return []
        lease = self.leases.get(worker.lease_id)
        if lease is None:
            return []
        worker.blocked = True
        resources.add(self.available, _cpu_only(lease.shape))
        return self._dispatch(now_ns)

    def on_worker_unblocked(self, now_ns: int, worker_id: str) -> list:
        worker = self.workers.get(worker_id)
        if worker is None or not worker.blocked:
            return []
        worker.blocked = False
        lease = self.leases.get(worker.lease_id or "")
        if lease is not None:
            resources.subtract(self.available, _cpu_only(lease.shape))
        # The CPU it lent may be reserved for a worker still booting: take such reservations back (newest
        # first) rather than grant beyond capacity when that worker registers.
        for waiting in reversed(self.waiting):
            if self.available.get(resources.CPU, 0) >= 0:
                break
            if waiting.worker_id is not None and waiting.request.shape.get(resources.CPU, 0) > 0:
                resources.add(self.available, waiting.request.shape)
                starting = self.workers.get(waiting.worker_id)
                if starting is not None:
                    starting.lease_id = None
                waiting.worker_id = None
        return []

    # ---- workers ------------------------------------------------------------------------------------

    def prestart(self, now_ns: int, count: int, job_id: str | None = None) -> list:
        effects = []
        for _ in range(count):
            if len(self.workers) >= self.max_workers:
                break
            effects.append(self._start_worker(now_ns, job_id))
        return effects

    def _start_worker(self, now_ns: int, job_id: str | None) -> StartWorker:
        worker_id = self._new_id("w")
        self.workers[worker_id] = _Worker(worker_id, job_id, started_ns=now_ns)
        return StartWorker(worker_id, job_id or "")

    def on_worker_registered(self, now_ns: int, worker_id: str, addr: str, ctl_addr: str = "") -> list:
        worker = self.workers.get(worker_id)
        if worker is None or worker.state != "starting":
            return [StopWorker(worker_id, "unknown or duplicate registration")]
        worker.addr = addr
        worker.ctl_addr = ctl_addr
        worker.state = "idle"
        worker.idle_since_ns = now_ns
        # A request may already hold resources for this worker.
        for waiting in self.waiting:
            if waiting.worker_id == worker_id:
                return self._grant(now_ns, waiting, worker) + self._dispatch(now_ns)
        return self._dispatch(now_ns)

    def on_worker_died(self, now_ns: int, worker_id: str, reason: str) -> list:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return []
        effects: list = []
        if worker.lease_id is not None:
            lease = self.leases.pop(worker.lease_id, None)
            if lease is not None:
                resources.add(self.available, _non_cpu(lease.shape) if worker.blocked else lease.shape)
                effects.append(Send(lease.request.holder_addr, LeaseRevoked(lease.lease_id, reason)))
        for waiting in self.waiting:
            if waiting.worker_id == worker_id:
                # The worker started for this request died before registering: start another.
                resources.add(self.available, waiting.request.shape)
                waiting.worker_id = None
        return effects + self._dispatch(now_ns)

    # ---- death of holders ---------------------------------------------------------------------------

    def holder_dead(self, holder_id: str) -> bool:
        return holder_id in self._dead_procs or holder_id.rpartition("-")[0] in self._dead_peers

    def on_process_died(self, now_ns: int, proc_id: str) -> list:
        """A submitter process died: drop its queued requests, then reclaim its leases."""
        self._dead_procs[proc_id] = None
        if len(self._dead_procs) > _MAX_DEAD_PROCS:
            del self._dead_procs[next(iter(self._dead_procs))]
        return self._reclaim(now_ns, lambda holder: holder == proc_id)

    def on_peer_died(self, now_ns: int, peer_id: str, holder_ids: set[str] | None = None) -> list:
        """A whole peer died: every process there is gone. `holder_ids` are its processes, if known."""
        self.drop_view(peer_id)
        self._dead_peers.add(peer_id)
        prefix = peer_id + "-"
        return self._reclaim(now_ns, lambda holder: holder.startswith(prefix) or bool(holder_ids and holder in holder_ids))

    def on_peer_alive(self, now_ns: int, peer_id: str) -> list:
        """Membership says the peer is alive (or suspect): if we wrote it off, it refuted. Serve its
        processes again — those that really died stay in `_dead_procs` (process ids are never reused)."""
        self._dead_peers.discard(peer_id)
        return []

    def _reclaim(self, now_ns: int, is_dead) -> list:
        effects: list = []
        # Everything of the dead goes before anything is dispatched: a dispatch in between would grant the
        # freed resources to the next request of the same dead holder (a grant nobody reads, then a worker
        # stopped for it).
        for waiting in [w for w in self.waiting if is_dead(w.request.holder_id)]:
            self._drop_waiting(waiting)
        for lease_id in [l.lease_id for l in self.leases.values() if is_dead(l.request.holder_id)]:
            # An actor's worker dies with the process that held it; a task worker goes back to the pool,
            # but it may still be running the dead holder's task, so stop it rather than reuse it.
            effects += self._end_lease(now_ns, self.leases.pop(lease_id), kill=True)
        return effects + self._dispatch(now_ns)

    # ---- dispatch -----------------------------------------------------------------------------------

    def _dispatch(self, now_ns: int) -> list:
        """Serve waiting requests in arrival order while resources and workers allow."""
        effects: list = []
        for waiting in list(self.waiting):
            if waiting.worker_id is not None:
                continue  # resources reserved; waiting for its worker to register
            req = waiting.request
            if req.affinity is not None and req.affinity != self.peer_id and not req.soft:
                continue  # hard affinity to another peer: it waits for that peer, never runs here
            if not self._fits_available(req.shape):
                continue
            if waiting.infeasible:
                waiting.infeasible = not resources.fits(req.shape, self.total)
                if waiting.infeasible:
                    continue
            worker = self._idle_worker(req.job_id)
            if worker is not None:
                effects += self._grant(now_ns, waiting, worker)
                continue
            if len(self.workers) >= self.max_workers:
                continue
            # Reserve now so no later request takes these resources while the worker starts.
            start = self._start_worker(now_ns, req.job_id)
            self._reserve(req.shape)
            waiting.worker_id = start.worker_id
            self.workers[start.worker_id].lease_id = "reserved"
            effects.append(start)
        return effects

    def _fits_available(self, shape: dict) -> bool:
        return resources.fits(shape, self.available)

    def _reserve(self, shape: dict) -> None:
        resources.subtract(self.available, shape)

    def _idle_worker(self, job_id: str) -> _Worker | None:
        fallback = None
        for worker in self.workers.values():
            if worker.state != "idle" or worker.lease_id is not None:
                continue
            if worker.job_id == job_id:
                return worker
            if worker.job_id is None and fallback is None:
                fallback = worker
        return fallback

    def _grant(self, now_ns: int, waiting: _Waiting, worker: _Worker) -> list:
        req = waiting.request
        if waiting.worker_id is None:
            self._reserve(req.shape)
        self.waiting.remove(waiting)
        self._by_request.pop(req.request_id, None)
        lease_id = self._new_id("l")
        self.leases[lease_id] = _Lease(lease_id, req, worker.worker_id, dict(req.shape), now_ns)
        worker.state = "leased"
        worker.lease_id = lease_id
        worker.job_id = req.job_id
        self.granted_total += 1
        return [Send(req.holder_addr, LeaseGranted(req.request_id, lease_id, worker.worker_id, worker.addr or "",
                                                   worker.ctl_addr, self.peer_id, self.peer_addr))]

    def _warn_infeasible(self, waiting: _Waiting) -> list:
        key = resources.shape_key(waiting.request.shape)
        if key in self._warned_shapes:
            return []
        self._warned_shapes.add(key)
        cluster = dict(self.total)
        for view in self.views.values():
            for name, units in view.total.items():
                cluster[name] = max(cluster.get(name, 0), units)
        return [Infeasible(waiting.request.request_id, waiting.request.holder_addr, dict(waiting.request.shape),
                           cluster)]

    # ---- time ---------------------------------------------------------------------------------------

    def on_tick(self, now_ns: int) -> list:
        effects: list = []
        if now_ns >= self._next_requeue_ns:
            self._next_requeue_ns = now_ns + self.config.requeue_interval_ms * 1_000_000
            effects += self._respill(now_ns)
            effects += self._ask_idle_leases_back(now_ns)
            effects += self._reap_idle_workers(now_ns)
            effects.append(Timer(self._next_requeue_ns))
        return effects

    def _respill(self, now_ns: int) -> list:
        effects: list = []
        budget = self.config.respill_per_tick
        for waiting in list(self.waiting):
            if waiting.worker_id is not None or waiting.request.spilled > 0:
                continue
            budget -= 1
            if budget < 0:
                break
            targets = self._spill_targets(waiting.request, max(1, now_ns - waiting.since_ns))
            if not targets:
                continue
            self.waiting.remove(waiting)
            self._by_request.pop(waiting.request.request_id, None)
            effects.append(self._spill(waiting.request, targets))
        return effects

    def _ask_idle_leases_back(self, now_ns: int) -> list:
        """Holders keep a lease briefly after their queue empties; if others wait, nudge them to return it."""
        wait_ns = self.config.lease_wanted_after_ms * 1_000_000
        waiters = {w.request.holder_id for w in self.waiting
                   if now_ns - w.since_ns >= wait_ns and w.worker_id is None and not w.infeasible}
        if not waiters:
            return []
        effects = []
        for lease in self.leases.values():
            # A holder's own waiting requests are no reason to give its leases back: only others' are.
            if not lease.request.actor and not lease.wanted_sent and waiters - {lease.request.holder_id}:
                lease.wanted_sent = True
                effects.append(Send(lease.request.holder_addr, LeaseWanted(lease.lease_id)))
        return effects

    def _reap_idle_workers(self, now_ns: int) -> list:
        ttl_ns = self.config.idle_worker_ttl_ms * 1_000_000
        idle = [w for w in self.workers.values() if w.state == "idle" and w.lease_id is None]
        effects = []
        excess = len(self.workers) - self.pool_size
        for worker in sorted(idle, key=lambda w: w.idle_since_ns):
            if excess <= 0:
                break
            if now_ns - worker.idle_since_ns >= ttl_ns:
                del self.workers[worker.worker_id]
                effects.append(StopWorker(worker.worker_id, "idle"))
                excess -= 1
        return effects

    # ---- checks (used by tests and the simulator) ---------------------------------------------------

    def check_invariants(self) -> list[str]:
        """Accounting must balance: available = total - what leases and reservations hold."""
        problems = []
        held: dict = {}
        for lease in self.leases.values():
            worker = self.workers.get(lease.worker_id)
            resources.add(held, _non_cpu(lease.shape) if worker is not None and worker.blocked else lease.shape)
        for waiting in self.waiting:
            if waiting.worker_id is not None:
                resources.add(held, waiting.request.shape)
        for name in set(held) | set(self.total) | set(self.available):
            expect = self.total.get(name, 0) - held.get(name, 0)
            if self.available.get(name, 0) != expect:
                problems.append(f"peer {self.peer_id}: {name} available {self.available.get(name, 0)}, "
                                f"expected {expect}")
        holders: dict = {}
        for lease in self.leases.values():
            if lease.worker_id in holders:
                problems.append(f"peer {self.peer_id}: worker {lease.worker_id} leased twice "
                                f"({holders[lease.worker_id]} and {lease.lease_id})")
            holders[lease.worker_id] = lease.lease_id
        return problems


def _cpu_only(shape: dict) -> dict:
    units = shape.get(resources.CPU, 0)
    return {resources.CPU: units} if units else {}


def _non_cpu(shape: dict) -> dict:
    return {k: v for k, v in shape.items() if k != resources.CPU}

"""A simulated peer daemon: the real membership and lease cores, driven the way `runtime/peer.py` drives them.

Theory of operation
-------------------
One `SimPeer` is one incarnation of a peer daemon on a machine `slot`. It owns a `Membership` core and a
`LeaseCore` (and, for the names workload, a `TableReplica`), hosts simulated worker processes
(`SimWorker`) and client processes (`Driver`), and carries out the cores' effects on the simulated network.
A crash throws the object away with everything in it; a restart builds a new one on the same slot.

The wiring follows the runtime:
- a member declared dead or left: the lease core reclaims that peer's leases (`on_peer_died`), and every
  local client hears of it (the runtime's `ProcessDied(kind="peer")`);
- the peer's own resource view goes into membership (`set_view`, when it changed), and the gossiped views
  of the others into the lease core, both at most every `--view-interval-ms` (the runtime: 100 ms); the
  lease core's copy is brought up to date when it is about to use it (a request arrives, or a tick), and
  incrementally (see `_refresh_views`);
- a lease tick is scheduled only while the lease core has something to do on a tick: every requeue interval
  while requests wait, else at the first tick on that grid when an idle worker's TTL has run out (reaping
  is all a tick does then): skipped ticks would have done nothing.

Timers: each core's `Timer(at)` requests are kept as one pending event per core (the earliest); a later
request supersedes nothing, an earlier one schedules another event, and a stale event is ignored.

Clock skew: the cores see the peer's local time, `now * rate + offset`; timers convert back.

A paused peer (and every process on it) processes nothing: deliveries and timers wait in `backlog` and run,
in order, when it resumes.
"""

from __future__ import annotations

from p2pcompute.lease.core import Infeasible, LeaseConfig, LeaseCore, StartWorker, StopWorker
from p2pcompute.lease.messages import (CancelLeaseRequest, LeaseGranted, LeaseRejected, LeaseSpillback,
                                       RequestLease, ReturnLease)
from p2pcompute.lease.policy import PeerView
from p2pcompute.net.effects import Send, Timer
from p2pcompute.net.membership import Fenced, MemberChanged
from p2pcompute.net.membership_messages import SUSPECT
from p2pcompute.ownership import task_messages as rm

NEVER = 1 << 62
_MS = 1_000_000


def peer_id_of(slot: int, gen: int) -> str:
    # Fixed width: process ids are "<peer id>-...", and the cores find a peer's processes by prefix.
    return f"p{slot:05d}g{gen:03d}"


class SimPeer:
    def __init__(self, cluster, slot: int, gen: int, peer_id: str) -> None:
        self.cluster = cluster
        self.engine = cluster.engine
        self.net = cluster.net
        self.slot = slot
        self.gen = gen
        self.peer_id = peer_id
        self.addr = "sim://" + peer_id
        self.up = True
        self.paused = False
        self.leaving = False
        self.seeds: list[str] = []  # addresses it joined through
        self.backlog: list = []
        self.off_ns, self.rate = cluster.clock_of(slot)
        self.ep = self.net.register(self.addr, self, self.on_message)
        self.key = self.ep.idx  # names this incarnation in the audit
        self._booting = True
        now = self.local()
        # Membership
        self.membership = cluster.membership_class(peer_id, self.addr, config=cluster.membership_config,
                                                   rng=cluster.peer_rng(), now_ns=now, meta={"gen": gen})
        self._mem_at = NEVER
        # Leases and workers
        self.lease: LeaseCore | None = None
        self.workers: dict = {}
        self.drivers: list = []
        self._lease_at = NEVER
        self._view_due = False
        self._view_sent_ns = -NEVER
        self._last_view: dict | None = None
        self._views_ns = -NEVER
        self._views_dirty: dict[str, None] = {}  # members whose view or state changed since the last refresh
        self._view_interval_ns = cluster.opts.view_interval_ms * _MS
        self._pv_cache: dict[str, tuple[dict, PeerView]] = {}
        if cluster.with_leases:
            self.lease = cluster.lease_class(peer_id, self.addr, cluster.peer_total,
                                             config=LeaseConfig(choices=cluster.opts.choices), rng=cluster.peer_rng())
            cluster.audit.peer_started(self.key, peer_id, cluster.peer_total)
            self._last_view = self.lease.local_view()
            self.membership.set_view(self._last_view)
            self.lease.set_views([])  # from here on its `views` are kept up to date in place
        # Table replica (names workload), attached by the workload
        self.table = None

    # ---- time ---------------------------------------------------------------------------------------

    def local(self) -> int:
        """This peer's clock: what its cores see as now."""
        if self.rate == 1.0:
            return self.engine.now + self.off_ns
        return int(self.engine.now * self.rate) + self.off_ns

    def to_global(self, local_ns: int) -> int:
        if self.rate == 1.0:
            return local_ns - self.off_ns
        return -int(-(local_ns - self.off_ns) // self.rate)  # ceil: never fire before the core asked

    def later(self, delay_ns: int, fn, a=None) -> None:
        """Run `fn(a)` on this peer after `delay_ns`, unless it crashed; waits out a pause."""
        self.engine.at(self.engine.now + delay_ns, self._run_later, fn, a)

    def _run_later(self, fn, a) -> None:
        if not self.up:
            return
        if self.paused:
            self.backlog.append((self._run_later, fn, a))
            return
        fn(a)

    # ---- starting -----------------------------------------------------------------------------------

    def boot(self, shared) -> None:
        """Pre-joined start: as if a seed had answered the Join with the full state (`SharedStart`)."""
        self._mem(self.membership.start_shared(self.local(), shared))
        if self.lease is not None:
            self._views_dirty.update(dict.fromkeys(shared.ids))
        self._start_workers()

    def join(self, seeds: list[str]) -> None:
        """A real join through `seeds` (a restart, a new peer, or `--join-mode join`)."""
        self.seeds = list(seeds)
        self._mem(self.membership.start(self.local(), seeds))
        self._start_workers()

    def _start_workers(self) -> None:
        if self.lease is not None:
            self._lease(self.lease.prestart(self.local(), self.lease.pool_size))
        self._booting = False

    # ---- membership ---------------------------------------------------------------------------------

    def _mem(self, effects: list) -> None:
        send, ep = self.net.send, self.ep
        for e in effects:
            t = type(e)
            if t is Send:
                send(ep, e.to, e.msg)
            elif t is Timer:
                at = self.to_global(e.at_ns)
                if at < self._mem_at:
                    self._mem_at = at
                    self.engine.at(at, self._mem_tick, at)
            elif t is MemberChanged:
                self._member_changed(e)
            elif t is Fenced:
                self.cluster.fence(self)  # the cores said nothing else: it is silent from here on
                return

    def _mem_tick(self, at: int, _=None) -> None:
        if not self.up:
            return
        if self.paused:
            self.backlog.append((self._mem_tick, at, None))
            return
        if at != self._mem_at:
            return  # superseded by an earlier request that already ran
        self._mem_at = NEVER
        self.engine.log.add(self.engine.now, -1, self.key, 0)
        self._mem(self.membership.on_tick(self.local()))

    def _member_changed(self, e: MemberChanged) -> None:
        cluster = self.cluster
        if self.lease is not None:  # only a lease core reads views (and empties this)
            self._views_dirty[e.peer_id] = None
        if e.peer_id == self.peer_id:
            return
        if e.state in ("dead", "left"):
            cluster.member_declared_gone(self, e)
            self._peer_died(e.peer_id, e.addr)
        else:
            if self.lease is not None:
                # As the runtime: not dead now, whatever came before (dead, a forgotten record, nothing).
                self._lease(self.lease.on_peer_alive(self.local(), e.peer_id))
            if e.previous_state is not None:
                cluster.member_seen(self, e)
                if self.lease is not None and e.previous_state in ("dead", "left"):
                    cluster.audit.on_holders_back(self.key, e.peer_id + "-")  # it refuted: alive again

    def _peer_died(self, peer_id: str, addr: str) -> None:
        prefix = peer_id + "-"
        if self.lease is not None:
            self.cluster.audit.on_holders_dead(self.key, prefix)
            self._lease(self.lease.on_peer_died(self.local(), peer_id))
        for d in self.drivers:
            d.on_peer_died(peer_id, addr)
        for w in self.workers.values():
            w.told_dead.add(prefix)
        self.cluster.workload.on_peer_saw_death(self, peer_id, True)

    # ---- messages -----------------------------------------------------------------------------------

    def on_message(self, src: str, msg) -> None:
        code = msg.TYPE
        if code < 100:
            self._mem(self.membership.on_message(self.local(), src, msg))
            if self.lease is not None:
                views = getattr(msg, "views", None)
                if views:
                    dirty, cache = self._views_dirty, self._pv_cache
                    for rec in views:
                        if type(rec) is tuple and len(rec) == 4:
                            hit = cache.get(rec[0])
                            if hit is None or hit[0] is not rec[3]:  # else: the view we already have
                                dirty[rec[0]] = None
                elif code == 4:  # Join: carries the joiner's view
                    self._views_dirty[msg.src_id] = None
            return
        t = type(msg)
        lease = self.lease
        if lease is not None and 100 <= code < 200:
            audit = self.cluster.audit
            if t is RequestLease:
                audit.on_request(self.key, msg.request_id, msg.shape, msg.holder_id)
                # Only a request not spilled yet is decided on views (a spilled one is served or queued here).
                if msg.spilled == 0 and self._views_dirty and \
                        self.engine.now - self._views_ns >= self._view_interval_ns:
                    self._refresh_views()
            elif t is ReturnLease:
                audit.on_return(self.key, msg.lease_id)
            elif t is CancelLeaseRequest:
                audit.on_request_over(self.key, msg.request_id)
            self._lease(lease.on_message(self.local(), src, msg))
        elif t is rm.ProcessDied:
            self._process_died(msg)
        elif 300 <= code < 400 and self.table is not None:
            self.cluster.workload.on_replica_message(self, src, msg)

    def _process_died(self, msg: rm.ProcessDied) -> None:
        """A process on another peer died (the runtime broadcasts these): reclaim, and tell local clients."""
        if self.lease is not None:
            dead = msg.proc_id
            self.cluster.audit.on_holders_dead(self.key, dead)
            self._lease(self.lease.on_process_died(self.local(), dead))
        for d in self.drivers:
            d.on_process_died(msg.proc_id, msg.kind)
        for w in self.workers.values():
            w.told_dead.add(msg.proc_id)
        self.cluster.workload.on_peer_saw_death(self, msg.proc_id, False)

    # ---- the lease core -----------------------------------------------------------------------------

    def _lease(self, effects: list) -> None:
        audit, send, ep = self.cluster.audit, self.net.send, self.ep
        for e in effects:
            t = type(e)
            if t is Send:
                m = e.msg
                mt = type(m)
                if mt is LeaseGranted:
                    audit.on_grant(self.key, m.request_id, m.lease_id, m.worker_id)
                elif mt is LeaseSpillback or mt is LeaseRejected:
                    audit.on_request_over(self.key, m.request_id)
                send(ep, e.to, m)
            elif t is StartWorker:
                if self._booting:
                    self._worker_up(e.worker_id)
                else:
                    self.later(self.cluster.worker_start_ns, self._worker_up, e.worker_id)
            elif t is StopWorker:
                self._stop_worker(e.worker_id, e.reason)
            elif t is Infeasible:
                self.cluster.infeasible += 1
        # Whatever the core just did may have changed what it has free, even with no effect to show.
        if not self._view_due:
            self._view_changed()
        self._lease_arm()

    def _lease_arm(self) -> None:
        lease = self.lease
        if lease.waiting:
            at = self.engine.now + lease.config.requeue_interval_ms * _MS
        elif len(lease.workers) > lease.pool_size:
            # Only idle workers to reap: a tick does nothing before the oldest idle one's TTL runs out.
            at = self._next_reap_ns(lease)
        else:
            return
        if at < self._lease_at:
            self._lease_at = at
            self.engine.at(at, self._lease_tick, at)

    def _next_reap_ns(self, lease) -> int:
        """The first tick (on the requeue grid) at which `_reap_idle_workers` could stop a worker."""
        step_ns = lease.config.requeue_interval_ms * _MS
        oldest = min((w.idle_since_ns for w in lease.workers.values() if w.state == "idle" and w.lease_id is None),
                     default=None)
        if oldest is None:
            return self.engine.now + step_ns  # none idle yet: look again as the cores act (each effect re-arms)
        wait_ns = self.to_global(oldest + lease.config.idle_worker_ttl_ms * _MS) - self.engine.now
        return self.engine.now + max(1, -(-wait_ns // step_ns)) * step_ns

    def _lease_tick(self, at: int, _=None) -> None:
        if not self.up:
            return
        if self.paused:
            self.backlog.append((self._lease_tick, at, None))
            return
        if at != self._lease_at:
            return
        self._lease_at = NEVER
        # A tick looks at views only to respill requests not spilled yet; the drivers here want the cluster's
        # size. Peers with neither (most, in large runs) skip the refresh: it was a fifth of the run time.
        if self._views_dirty and self.engine.now - self._views_ns >= self._view_interval_ns and \
                (self.drivers or any(w.request.spilled == 0 for w in self.lease.waiting)):
            self._refresh_views()
        # The core's own Timer is not needed: _lease_arm keeps ticking while there is work for a tick.
        self._lease([e for e in self.lease.on_tick(self.local()) if type(e) is not Timer])
        if self.cluster.check_cores and (self.cluster.rng_obs.random() < self.cluster.check_cores):
            for problem in self.lease.check_invariants():
                self.cluster.violations.add("lease_accounting", problem)

    def _worker_up(self, worker_id: str) -> None:
        if self.lease is None or worker_id not in self.lease.workers:
            return  # stopped before it registered
        from sims.worker import SimWorker
        w = SimWorker(self, worker_id)
        self.workers[worker_id] = w
        self._lease(self.lease.on_worker_registered(self.local(), worker_id, w.addr, w.addr))

    def _stop_worker(self, worker_id: str, reason: str) -> None:
        w = self.workers.pop(worker_id, None)
        self.cluster.audit.on_worker_gone(self.key, worker_id)
        if w is not None:
            w.die()
            self._announce(w, reason, idle=reason == "idle")

    def kill_worker(self, worker_id: str) -> None:
        """A worker process dies on its own (the `kill` fault): its lease is revoked, everyone is told."""
        w = self.workers.pop(worker_id, None)
        if w is None:
            return
        w.die()
        self.cluster.audit.on_worker_gone(self.key, worker_id)
        self._lease(self.lease.on_worker_died(self.local(), worker_id, "killed by the simulator"))
        self._announce(w, "killed by the simulator")

    def _announce(self, w, reason: str, idle: bool = False) -> None:
        """The runtime tells every peer of a local process's exit (`ProcessDied`), and they tell their
        clients. Here only peers with clients are told, and an idle worker's exit (reaped) only when the
        workload passes references: otherwise no client acts on it. (Each costs the runtime N messages.)"""
        for d in self.drivers:
            d.on_process_died(w.worker_id, "worker")
        self.cluster.workload.on_peer_saw_death(self, w.worker_id, False)
        if idle and not self.cluster.workload.uses_refs:
            return
        died = rm.ProcessDied(w.worker_id, "worker", reason, w.addr, w.addr)
        for other in self.cluster.driver_peers():
            if other is not self:
                self.net.send(self.ep, other.addr, died)

    # ---- resource views -----------------------------------------------------------------------------

    def _view_changed(self) -> None:
        if not self._view_due:
            self._view_due = True
            self.engine.at(max(self.engine.now, self._view_sent_ns + self._view_interval_ns), self._push_view)

    def _push_view(self, _a=None, _b=None) -> None:
        if not self.up:
            return
        if self.paused:
            self.backlog.append((self._push_view, None, None))
            return
        self._view_due = False
        self._view_sent_ns = self.engine.now
        view = self.lease.local_view()
        if view != self._last_view:
            self._last_view = view
            self.membership.set_view(view)
            deadline = self.membership.next_deadline_ns()
            if deadline < NEVER:
                self._mem([Timer(deadline)])

    def _refresh_views(self) -> None:
        """Bring the lease core's views of the other peers up to date, at most once per view interval.

        Equivalent to the runtime's `lease.set_views(peer_views())` — every alive or suspect member with a
        resource view, as a `PeerView` — but incremental: only members whose view or state changed since
        the last refresh (`_views_dirty`, noted from the messages membership handled and from its
        MemberChanged effects) are looked at, and the core's `views` dict, which `set_views` would
        replace, is updated in place. A full rebuild at 1,000 peers costs ~1 ms a time; this costs what
        changed. `tests/sims` checks the two agree.
        """
        now = self.engine.now
        if now - self._views_ns < self._view_interval_ns:
            return
        self._views_ns = now
        dirty = self._views_dirty
        if not dirty:
            return
        self._views_dirty = {}
        lease, views, cache, membership = self.lease, self.lease.views, self._pv_cache, self.membership
        for pid in dirty:
            if pid == self.peer_id:
                continue
            m = membership.member(pid)
            pv = None
            if m is not None and m.state_code <= SUSPECT and m.view:
                v = m.view
                hit = cache.get(pid)
                if hit is not None and hit[0] is v and hit[1].addr == m.addr:
                    if pid in views:
                        continue  # unchanged, and already there
                    pv = hit[1]
                else:
                    total, avail = v.get("total"), v.get("available")
                    if isinstance(total, dict) and isinstance(avail, dict):
                        # The gossiped dict itself: a spill replaces the core's copy rather than change it.
                        pv = PeerView(pid, m.addr, total, avail, int(v.get("queued", 0) or 0))
                        cache[pid] = (v, pv)
            if pv is None:
                lease.drop_view(pid)
                cache.pop(pid, None)
            else:
                lease.put_view(pv)
        n = len(views) + 1
        for d in self.drivers:
            d.sub.peers_that_fit = n

    def full_views(self) -> list[PeerView]:
        """What the runtime would hand `set_views` now (for the test that the incremental copy agrees)."""
        out = []
        for m in self.membership.alive():
            v = m.view
            if m.peer_id == self.peer_id or not v:
                continue
            total, avail = v.get("total"), v.get("available")
            if isinstance(total, dict) and isinstance(avail, dict):
                out.append(PeerView(m.peer_id, m.addr, total, avail, int(v.get("queued", 0) or 0)))
        return out

    # ---- faults -------------------------------------------------------------------------------------

    def endpoints(self) -> list:
        eps = [self.ep] + [w.ep for w in self.workers.values()] + [d.ep for d in self.drivers]
        if self.table is not None:
            eps += self.cluster.workload.endpoints_of(self)
        return eps

    def stop(self) -> None:
        """Crash, or the end of a leave: every process of this peer is gone, with all its state."""
        self.up = False
        self.backlog = []
        for ep in self.endpoints():
            self.net.unregister(ep)
        for w in self.workers.values():
            w.alive = False
        for d in self.drivers:
            d.die()
        self.cluster.audit.peer_gone(self.key)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        backlog, self.backlog = self.backlog, []
        for fn, a, b in backlog:
            if not self.up or self.paused:
                if self.up:
                    self.backlog.append((fn, a, b))
                continue
            fn(a, b)

    def leave(self) -> None:
        self.leaving = True
        self._mem(self.membership.leave(self.local()))

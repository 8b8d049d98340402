"""The `actors` workload: long-lived actors on leased workers, called by drivers on other peers.

Each driver (on `--submitters` of the peers) owns two actors of half a CPU. An actor is placed like a task —
its creation is an actor task, the submitter core's `ActorPlaced` hands its lease over to it — and keeps the
lease for its lifetime. Callers resolve an actor's location from its owner (`ResolveActor` ->
`ActorLocation`), then push calls straight to its worker, in order per caller (`seq`); the worker runs them
one at a time. Offered load: `--load` x the actors' serial capacity.

Methods: `work` (a `--service` draw), and three that move references, so that refs reach processes other
than their owner through a third party:
- `store(x)`: the caller passes a ref it owns; the actor keeps it in its state;
- `fetch()`: the actor returns one of the refs it keeps inside its result (it forwards a borrowed ref to the
  caller, registering the caller with the ref's owner), and the caller holds it for a while;
- `forget()`: the actor drops one of the refs it keeps.

Failures, as the design says: an actor whose worker or peer dies is restarted by its owner up to
`max_restarts` (3) — a new creation task, a new incarnation — and calls in flight fail with
`ActorDiedError`; an owner that dies takes its actors with it (their leases die with their holder). Checks:
`actor_order` (each caller's calls run in the order sent), and the reference checks of refs.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pcompute.ownership import task_messages as rm
from p2pcompute.ownership.wire_values import InlineResult, contained_of, result_from_wire, result_to_wire
from sims.driver import Driver, SimTask
from sims.workloads.base import Workload
from sims.workloads.dag import table_class
from sims.workloads.refs import REF_MESSAGES, RefOps, RefTruth

S = 1_000_000_000
UNIT = 10_000
ACTOR_SHAPE = {"CPU": UNIT // 2}
MAX_RESTARTS = 3
_METHODS = (("work", 0.7), ("store", 0.1), ("fetch", 0.1), ("forget", 0.1))


@dataclass
class Actor:
    actor_id: str
    owner: Driver
    state: str = "creating"  # creating | alive | dead
    incarnation: int = 0
    restarts_left: int = MAX_RESTARTS
    worker_id: str = ""
    worker_addr: str = ""
    calls_done: int = 0


@dataclass
class _Caller:
    """A driver's caller-side state."""

    locations: dict = field(default_factory=dict)  # actor id -> (incarnation, worker id, worker addr)
    waiting: dict = field(default_factory=dict)  # actor id -> calls waiting for a location
    seq: dict = field(default_factory=dict)  # actor id -> last seq sent
    inflight: dict = field(default_factory=dict)  # task id -> (actor id, worker id)
    holds: int = 0  # refs the user still holds, dropped later


class ActorsWorkload(Workload):
    name = "actors"
    uses_refs = True

    def __init__(self, cluster, share: float = 1.0, driver_index: int = 3, truth: RefTruth | None = None,
                 ops: RefOps | None = None) -> None:
        super().__init__(cluster)
        opts = cluster.opts
        self.rng = _derive(cluster.rng_work)
        self.truth = truth or RefTruth(cluster.violations)
        self.ops = ops or RefOps(cluster, self.truth, table_class(opts))
        self.driver_index = driver_index
        self.mean_service_ns = opts.service.mean_ns()
        self._service = opts.service.sampler(self.rng)
        n_sub = max(1, round(opts.submitters * opts.peers))
        self.submitter_slots = set(self.rng.sample(range(opts.peers), n_sub))
        mean_call_s = (0.7 + 0.3 * 0.1) * self.mean_service_ns / S
        self.rate_each = opts.load * share * 2 / mean_call_s  # two actors per driver, each kept busy
        self.actors: dict[str, Actor] = {}
        self.drivers: list[Driver] = []
        self.calls = 0
        self.calls_failed = 0
        self.restarts = 0
        self._last_seq: dict = {}  # (worker addr, caller addr) -> last seq run, for actor_order

    # ---- drivers ----

    def on_peer_up(self, peer, restarted: bool) -> None:
        if peer.slot in self.submitter_slots and peer.lease is not None:
            d = Driver(peer, self.driver_index)
            d.state["wl"] = self
            d.state["caller"] = _Caller()
            self.drivers.append(d)
            for _ in range(2):
                actor = Actor(d.new_id("a"), d)
                self.actors[actor.actor_id] = actor
                self._create(actor)
            self._arm(d)

    def _create(self, actor: Actor) -> None:
        d = actor.owner
        task_id = d.new_id()
        record = self.cluster.ledger.submitted(task_id, d.proc_id, "actor_create", self.engine.now, 10_000_000)
        task = SimTask(task_id, ((("CPU", UNIT // 2),), "actor", task_id), ACTOR_SHAPE, 10_000_000, record,
                       kind="actor_create", actor_id=actor.actor_id, payload=actor.incarnation)
        actor.state = "creating"
        actor.worker_id = actor.worker_addr = ""
        d.submit(task)

    def on_actor_placed(self, driver, task_id: str, lease) -> None:
        task = driver.tasks.get(task_id)
        actor = self.actors.get(task.actor_id) if task is not None else None
        if actor is None or task.payload != actor.incarnation:
            return
        actor.worker_id, actor.worker_addr = lease.worker_id, lease.worker_addr
        task.record.where = lease.worker_id
        driver.peer.net.send(driver.ep, lease.worker_addr, driver.push_message(task, lease.worker_addr))

    # ---- calls ----

    def _arm(self, d: Driver) -> None:
        if self.rate_each > 0:
            d.peer.later(int(self.rng.expovariate(self.rate_each) * S), self._arrive, d)

    def _arrive(self, d: Driver) -> None:
        if not d.alive or (self.stop_ns and self.engine.now >= self.stop_ns):
            return
        live, member = self.cluster.live_process, d.peer.membership.member
        # Handles travel in messages from their owners: a caller only has those of owners on peers its
        # membership knows alive (else a call could wait on an owner nobody will ever declare dead).
        choices = [a for a in self.actors.values() if a.owner is not d and a.state != "dead" and live(a.owner.proc_id)
                   and (m := member(a.owner.peer.peer_id)) is not None and m.state == "alive"]
        if choices:
            self.call(d, self.rng.choice(choices))
        self._arm(d)

    def call(self, d: Driver, actor: Actor) -> SimTask:
        rng, caller = self.rng, d.state["caller"]
        roll, acc = rng.random(), 0.0
        for method, p in _METHODS:
            acc += p
            if roll <= acc:
                break
        service = self._service() if method == "work" else self._service() // 10
        task_id = d.new_id()
        record = self.cluster.ledger.submitted(task_id, d.proc_id, "actor_call", self.engine.now, service)
        task = SimTask(task_id, (), {}, service, record, kind="actor_call", actor_id=actor.actor_id,
                       method=method)
        self.calls += 1
        out = d.new_id("o")
        task.return_ids = [out]
        self.ops.add_local(d, out, d.addr)
        if method == "store":
            x = d.new_id("o")
            self.ops.create(d, x)
            self.ops.pin(d, x, d.addr)
            task.refs = [[x, d.addr]]
            task.payload = x
        d.tasks[task_id] = task
        owner = actor.owner.proc_id
        if owner in d.told_dead or owner.split("-", 1)[0] + "-" in d.told_dead:
            self._fail_call(d, task)  # the handle's owner is known dead: the actor is gone with it
            return task
        loc = caller.locations.get(actor.actor_id)
        if loc is None:
            queue = caller.waiting.setdefault(actor.actor_id, [])
            queue.append(task)
            if len(queue) == 1:
                self._resolve(d, actor)
        else:
            self._send_call(d, task, loc)
        return task

    def _resolve(self, d: Driver, actor: Actor) -> None:
        d.peer.net.send(d.ep, actor.owner.addr, rm.ResolveActor(actor.actor_id, d.addr))

    def _send_call(self, d: Driver, task: SimTask, loc: tuple) -> None:
        caller = d.state["caller"]
        _, worker_id, worker_addr = loc
        task.seq = caller.seq[task.actor_id] = caller.seq.get(task.actor_id, 0) + 1
        task.record.where = worker_id
        caller.inflight[task.task_id] = (task.actor_id, worker_id)
        if task.refs:
            self.ops.send(d, worker_addr, task.refs)
        d.peer.net.send(d.ep, worker_addr, d.push_message(task, worker_addr))

    def on_driver_message(self, driver, src: str, msg) -> None:
        t = type(msg)
        if t is rm.ResolveActor:
            actor = self.actors.get(msg.actor_id)
            if actor is not None and actor.owner is driver:
                state = actor.state if actor.state != "creating" or not actor.incarnation else "restarting"
                driver.peer.net.send(driver.ep, msg.reply_to, rm.ActorLocation(
                    actor.actor_id, state, actor.worker_id, actor.worker_addr, actor.worker_addr,
                    actor.incarnation, None))
        elif t is rm.ActorLocation:
            self._on_location(driver, msg)
        elif t in REF_MESSAGES:
            self.ops.on_message(driver, src, msg)

    def _on_location(self, d: Driver, msg: rm.ActorLocation) -> None:
        caller = d.state["caller"]
        queue = caller.waiting.get(msg.actor_id)
        if not queue:
            return
        if msg.state == "alive":
            loc = caller.locations[msg.actor_id] = (msg.incarnation, msg.worker_id, msg.addr)
            del caller.waiting[msg.actor_id]
            for task in queue:
                if not task.done:
                    self._send_call(d, task, loc)
        elif msg.state == "dead":
            del caller.waiting[msg.actor_id]
            for task in queue:
                self._fail_call(d, task)
        else:  # creating or restarting: ask again shortly
            actor = self.actors.get(msg.actor_id)
            if actor is not None:
                d.peer.later(200_000_000, lambda _: d.alive and self._resolve(d, actor))

    def on_task_done(self, driver, task, msg) -> None:
        if task.kind == "actor_create":
            actor = self.actors.get(task.actor_id)
            if actor is not None and task.payload == actor.incarnation and actor.state == "creating":
                actor.state = "alive"
            return
        caller = driver.state["caller"]
        caller.inflight.pop(task.task_id, None)
        actor = self.actors.get(task.actor_id)
        if actor is not None:
            actor.calls_done += 1
        out = task.return_ids[0]
        contained = contained_of(result_from_wire(msg.returns[0])) if msg.returns else []
        self.ops.adopt(driver, out, contained)
        if task.method == "store":
            self.ops.unpin(driver, task.payload)
            self._hold_then_drop(driver, task.payload)
        for oid, owner_addr in contained:  # the user reads the value: the ref inside becomes an ObjectRef
            if out in driver.refs:
                self.ops.add_local(driver, oid, owner_addr)
                self._hold_then_drop(driver, oid)
        self.ops.drop_local(driver, out)

    def _hold_then_drop(self, d: Driver, oid: str) -> None:
        d.state["caller"].holds += 1
        d.peer.later(int(self.rng.random() * 3 * S), self._drop, (d, oid))

    def _drop(self, arg) -> None:
        d, oid = arg
        if d.alive:
            d.state["caller"].holds -= 1
            self.ops.drop_local(d, oid)

    def _fail_call(self, d: Driver, task: SimTask) -> None:
        if task.done:
            return
        d.state["caller"].inflight.pop(task.task_id, None)
        self.calls_failed += 1
        d.fail(task, "ActorDiedError")

    def on_task_failed(self, driver, task, error: str) -> None:
        if task.kind != "actor_call" or not driver.alive:
            return
        if task.method == "store" and task.payload in driver.refs:
            self.ops.unpin(driver, task.payload)
            self._hold_then_drop(driver, task.payload)
        self.ops.drop_local(driver, task.return_ids[0])

    def on_stale_reply(self, driver, msg) -> None:
        contained = contained_of(result_from_wire(msg.returns[0])) if msg.returns else []
        if contained:
            self.ops.discard(driver, contained)

    # ---- the actor's side ----

    def on_task_start(self, worker, msg) -> None:
        if msg.kind == "actor_create":
            worker.state["actor"] = msg.actor_id
            return
        if msg.kind != "actor_call":
            return
        key = (worker.addr, msg.owner_addr)  # the address: worker ids repeat after a same-id restart
        last = self._last_seq.get(key, 0)
        if msg.seq <= last:
            self.cluster.violations.add("actor_order", f"actor {msg.actor_id} on {worker.worker_id} ran call "
                                                       f"{msg.seq} from {msg.owner_addr} after call {last}")
        self._last_seq[key] = msg.seq
        if msg.refs:
            self.ops.receive(worker, msg.refs)

    def on_task_end(self, worker, msg) -> list:
        if msg.kind != "actor_call" or worker.state.get("actor") != msg.actor_id:
            return [result_to_wire(InlineResult(b"", []))]
        kept = worker.state.setdefault("kept", [])
        contained: list = []
        if msg.method == "store" and msg.refs:
            for oid, owner_addr in msg.refs:
                self.ops.add_local(worker, oid, owner_addr)
                kept.append([oid, owner_addr])
        elif msg.method == "fetch" and kept:
            ref = list(self.rng.choice(kept))
            contained = [ref]
            self.ops.send(worker, msg.owner_addr, contained)
        elif msg.method == "forget" and kept:
            oid, _ = kept.pop(int(self.rng.random() * len(kept)))
            self.ops.drop_local(worker, oid)
        if msg.refs:
            self.ops.consume(worker, msg.refs)
        return [result_to_wire(InlineResult(b"", contained))]

    def on_worker_message(self, worker, src: str, msg) -> None:
        if type(msg) in REF_MESSAGES:
            self.ops.on_message(worker, src, msg)

    # ---- deaths ----

    def on_driver_saw_death(self, driver, dead: str) -> None:
        """`dead` is a process id, or a '<peer id>-' prefix for every process of a peer."""
        def gone(proc_id: str) -> bool:
            return proc_id == dead or (dead.endswith("-") and proc_id.startswith(dead))

        caller = driver.state.get("caller")
        if caller is None:
            return
        for actor_id, loc in list(caller.locations.items()):
            actor = self.actors.get(actor_id)
            if gone(loc[1]) or (actor is not None and gone(actor.owner.proc_id)):
                del caller.locations[actor_id]
        for task_id, (actor_id, worker_id) in list(caller.inflight.items()):
            actor = self.actors.get(actor_id)
            if gone(worker_id) or (actor is not None and gone(actor.owner.proc_id)):
                task = driver.tasks.get(task_id)
                if task is not None:
                    self._fail_call(driver, task)
        for actor_id, queue in list(caller.waiting.items()):
            actor = self.actors.get(actor_id)
            if actor is not None and gone(actor.owner.proc_id):
                del caller.waiting[actor_id]
                for task in queue:
                    self._fail_call(driver, task)
        # Owner side: an actor whose worker died is restarted, up to MAX_RESTARTS.
        for actor in self.actors.values():
            if actor.owner is driver and actor.state != "dead" and actor.worker_id and gone(actor.worker_id):
                self._actor_died(actor)

    def _actor_died(self, actor: Actor) -> None:
        d = actor.owner
        for task in list(d.tasks.values()):
            if task.kind == "actor_create" and task.actor_id == actor.actor_id:
                d.fail(task, "ActorDiedError")
        if actor.restarts_left > 0 and d.alive:
            actor.restarts_left -= 1
            actor.incarnation += 1
            self.restarts += 1
            self._create(actor)
        else:
            actor.state = "dead"

    def on_process_gone(self, proc) -> None:
        self.ops.died(proc)
        if isinstance(proc, Driver):
            for actor in self.actors.values():
                if actor.owner is proc:
                    actor.state = "dead"

    def on_peer_saw_death(self, peer, dead_id: str, is_peer: bool) -> None:
        for w in list(peer.workers.values()):
            if w.refs is not None and w.alive:
                effects = w.refs.on_peer_died(dead_id) if is_peer else w.refs.on_process_died(dead_id)
                self.ops.run(w, effects)

    # ---- the end ----

    def idle(self) -> bool:
        for d in self.drivers:
            if d.alive:
                c = d.state["caller"]
                if c.inflight or c.waiting or c.holds:
                    return False
        return True

    def metrics(self) -> dict:
        return {"actors": len(self.actors), "actor_restarts": self.restarts,
                "actors_dead": sum(1 for a in self.actors.values() if a.state == "dead"),
                "actor_calls": self.calls, "actor_calls_failed": self.calls_failed,
                "objects_created": self.truth.created, "objects_freed": len(self.truth.freed)}


def _derive(master):
    import random
    return random.Random(master.getrandbits(64))

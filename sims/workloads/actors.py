"""The `actors` workload: long-lived actors on leased workers, called by drivers on other peers.

Each driver (an `OwnerDriver`: the product's `OwnerCore` and its actor machines, `ownership/actors.py`) on
`--submitters` of the peers owns two actors of half a CPU, created with `max_restarts` 3. Everything an
actor's life involves is the core's: placing it like a task and keeping the lease (`ActorPlaced`), pushing
its constructor, restarting it on a new lease when its worker or peer dies, publishing each new location to
the callers that asked (`ResolveActor` -> `ActorLocation`), and on the caller's side keeping the caller's
order, losing calls in flight at a restart — retried in front when `max_task_retries` allows (half the
calls ask for 2), failed with `ActorUnavailableError` otherwise — and failing calls of a dead actor
(`ActorDiedError`). Offered load: `--load` x the actors' serial capacity.

A caller gets a handle the way a program does: its owner sends it (the owner registers the caller as a
borrower of the actor id; the shortcut is that the handle arrives at once, on the first call). Methods:
`work` (a `--service` draw), and three that move references, so that refs reach processes other than their
owner through a third party:
- `store(x)`: the caller puts `x` and passes it; the actor keeps it in its state;
- `fetch()`: the actor returns one of the refs it keeps inside its result (it forwards a borrowed ref to the
  caller, registering the caller with the ref's owner), and the caller holds it for a while;
- `forget()`: the actor drops one of the refs it keeps.

Checks: `actor_order` (on the actor's worker: each caller's calls run in the order the caller made them, and
with increasing sequence numbers), and the reference checks of refs.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pcompute.ownership.task_record import TaskRecord
from p2pcompute.ownership.wire_values import InlineResult, result_to_wire
from sims.owner_driver import OwnerDriver
from sims.workloads.base import Workload
from sims.workloads.core_refs import CoreRefHooks, CoreRefOps
from sims.workloads.dag import core_classes, table_class
from sims.workloads.refs import REF_MESSAGES, RefTruth

S = 1_000_000_000
UNIT = 10_000
ACTOR_SHAPE = {"CPU": UNIT // 2}
MAX_RESTARTS = 3
CREATE_NS = 10_000_000
_METHODS = (("work", 0.7), ("store", 0.1), ("fetch", 0.1), ("forget", 0.1))


@dataclass
class Actor:
    actor_id: str
    owner: OwnerDriver
    record: object  # the ledger's record of its creation, until it is alive or dead for good

    def owned(self):
        return self.owner.core.actors.owned.get(self.actor_id)


@dataclass
class _Call:
    rec: TaskRecord
    x: str | None  # the object a `store` call passes


def submission_index(task_id: str) -> int:
    """Ids are '<process id>.<hex counter>': the counter orders one process's submissions."""
    return int(task_id.rsplit(".", 1)[1], 16)


class ActorsWorkload(CoreRefHooks, Workload):
    name = "actors"
    uses_refs = True

    def __init__(self, cluster, share: float = 1.0, driver_index: int = 3, truth: RefTruth | None = None,
                 ops: CoreRefOps | None = None) -> None:
        super().__init__(cluster)
        opts = cluster.opts
        self.rng = _derive(cluster.rng_work)
        self.truth = truth or RefTruth(cluster.violations)
        self.ops = ops or CoreRefOps(cluster, self.truth, table_class(opts))
        self.core_class, self.core_table = core_classes(opts)
        self.driver_index = driver_index
        self.mean_service_ns = opts.service.mean_ns()
        self._service = opts.service.sampler(self.rng)
        n_sub = max(1, round(opts.submitters * opts.peers))
        self.submitter_slots = set(self.rng.sample(range(opts.peers), n_sub))
        mean_call_s = (0.7 + 0.3 * 0.1) * self.mean_service_ns / S
        self.rate_each = opts.load * share * 2 / mean_call_s  # two actors per driver, each kept busy
        self.actors: dict[str, Actor] = {}
        self.drivers: list[OwnerDriver] = []
        self.calls: dict[str, _Call] = {}  # task id -> a call not ended yet
        self.calls_made = 0
        self.calls_failed = 0
        self.holds = 0  # refs the users still hold, dropped later
        self._last_seq: dict = {}  # (worker addr, caller addr) -> (last seq run, last submission index)

    # ---- drivers and actors ----

    def on_peer_up(self, peer, restarted: bool) -> None:
        if peer.slot in self.submitter_slots and peer.lease is not None:
            d = OwnerDriver(peer, self.driver_index, self.core_class, self.core_table)
            d.state["wl"] = self
            d.state["handles"] = set()
            d.state["creating"] = []
            self.ops.table(d)
            self.drivers.append(d)
            for _ in range(2):
                self._create(d)
            self._arm(d)

    def _create(self, d: OwnerDriver) -> None:
        """`Actor.options(max_restarts=3).remote()`: the owner's handle is a local ref to the actor id."""
        actor_id = d.new_id()
        task_id = d.new_id()
        record = self.cluster.ledger.submitted(task_id, d.proc_id, "actor_create", self.engine.now, CREATE_NS)
        record.cpu = ACTOR_SHAPE["CPU"]
        actor = self.actors[actor_id] = Actor(actor_id, d, record)
        self.ops.create(d, actor_id)
        d.state["handles"].add(actor_id)
        rec = TaskRecord(task_id, "actor_create", self.name, "sim-actor", None, None, None, [], [], [actor_id],
                         dict(ACTOR_SHAPE), {"wire": {"service_ns": CREATE_NS}}, 0, False, actor_id=actor_id)
        d.state["creating"].append(actor)
        d.apply(d.core.actors.create(rec, MAX_RESTARTS, False))

    def _settle_creations(self, d: OwnerDriver) -> None:
        """An actor's creation ends when the actor is alive (constructed) or dead for good: then its ledger
        record does, whichever creation task (a restart makes a new one) got it there."""
        pending = d.state.get("creating")
        if not pending:
            return
        now, ledger = self.engine.now, self.cluster.ledger
        for actor in list(pending):
            owned = actor.owned()
            if owned is None or owned.state == "dead":
                ledger.fail(actor.record, "ActorDiedError", now)
            elif owned.state == "alive" and actor.actor_id in d.core.objects.values and \
                    d.core.objects.values[actor.actor_id].state != 0:
                ledger.finish(actor.record, now)
            else:
                continue
            pending.remove(actor)

    # ---- calls ----

    def _arm(self, d: OwnerDriver) -> None:
        if self.rate_each > 0:
            d.peer.later(int(self.rng.expovariate(self.rate_each) * S), self._arrive, d)

    def _arrive(self, d: OwnerDriver) -> None:
        if not d.alive or (self.stop_ns and self.engine.now >= self.stop_ns):
            return
        live, member = self.cluster.live_process, d.peer.membership.member
        # Handles travel in messages from their owners: a caller only has those of owners on peers its
        # membership knows alive (else a call could wait on an owner nobody will ever declare dead).
        choices = [a for a in self.actors.values() if a.owner is not d and live(a.owner.proc_id)
                   and (o := a.owned()) is not None and o.state != "dead"
                   and (m := member(a.owner.peer.peer_id)) is not None and m.state == "alive"]
        if choices:
            self.call(d, self.rng.choice(choices))
        self._arm(d)

    def _get_handle(self, d: OwnerDriver, actor: Actor) -> None:
        """The owner sends `d` a handle (registering it as a borrower); `d` keeps it for its life."""
        if actor.actor_id in d.state["handles"]:
            return
        d.state["handles"].add(actor.actor_id)
        refs = [[actor.actor_id, actor.owner.addr]]
        self.ops.send(actor.owner, d.addr, refs)
        self.ops.receive(d, refs)
        self.ops.add_local(d, actor.actor_id, actor.owner.addr)
        self.ops.consume(d, refs)
        d.core.actors.caller(actor.actor_id, actor.owner.addr)

    def call(self, d: OwnerDriver, actor: Actor) -> TaskRecord:
        rng = self.rng
        roll, acc = rng.random(), 0.0
        for method, p in _METHODS:
            acc += p
            if roll <= acc:
                break
        self._get_handle(d, actor)
        service = self._service() if method == "work" else self._service() // 10
        retries = 2 if rng.random() < 0.5 else 0
        x = None
        nested: list = []
        if method == "store":
            x = d.new_id()
            self.ops.create(d, x)
            d.put(x)
            nested = [(x, d.addr)]
        task_id = d.new_id()
        out = f"{task_id}.0"
        self.ops.add_local(d, out, d.addr)
        record = self.cluster.ledger.submitted(task_id, d.proc_id, "actor_call", self.engine.now, service)
        rec = TaskRecord(task_id, "actor_call", self.name, "", None, None, None, [], nested, [out], {},
                         {"max_task_retries": retries, "wire": {"service_ns": service}}, 0, False,
                         actor_id=actor.actor_id, method=method)
        self.calls[task_id] = _Call(rec, x)
        self.calls_made += 1
        self.ops.task_submitted(d, [oid for oid, _ in nested])
        d.submit(rec, record)
        return rec

    # ---- the caller's and the owner's side ----

    def on_task_ending(self, driver, task_id: str) -> None:
        call = self.calls.get(task_id)
        if call is not None and call.x is not None:
            self.ops.task_ended(driver, [call.x])

    def on_task_finished(self, driver, task_id: str, error: str | None) -> None:
        call = self.calls.pop(task_id, None)
        if call is None:
            self._settle_creations(driver)
            return
        rec = call.rec
        if call.x is not None:
            self._hold_then_drop(driver, call.x)
        if error is not None:
            self.calls_failed += 1
        out = rec.return_ids[0]
        v = driver.core.objects.values.get(out)
        if error is None and v is not None:
            # The user reads the value: the refs inside become its own ObjectRefs.
            for oid, owner_addr in v.contained:
                self.ops.add_local(driver, oid, owner_addr)
                self._hold_then_drop(driver, oid)
        self.ops.drop_local(driver, out)

    def _hold_then_drop(self, d: OwnerDriver, oid: str) -> None:
        self.holds += 1
        d.peer.later(int(self.rng.random() * 3 * S), self._drop, (d, oid))

    def _drop(self, arg) -> None:
        d, oid = arg
        self.holds -= 1
        if d.alive:
            self.ops.drop_local(d, oid)

    def on_driver_saw_death(self, driver, dead: str) -> None:
        self._settle_creations(driver)

    # ---- the actor's side ----

    def on_task_start(self, worker, msg) -> None:
        if msg.kind != "actor_call":
            return
        if worker.state.get("actor") == msg.actor_id:
            key = (worker.addr, msg.owner_addr)  # the address: worker ids repeat after a same-id restart
            last_seq, last_index = self._last_seq.get(key, (0, -1))
            index = submission_index(msg.task_id)
            if msg.seq <= last_seq or index <= last_index:
                self.cluster.violations.add("actor_order", f"actor {msg.actor_id} on {worker.worker_id} ran call "
                                                           f"{msg.task_id} (seq {msg.seq}) from {msg.owner_addr} "
                                                           f"after a later one (seq {last_seq})")
            self._last_seq[key] = (max(msg.seq, last_seq), max(index, last_index))
        if msg.refs:
            self.ops.receive(worker, msg.refs)

    def on_task_end(self, worker, msg):
        if msg.kind != "actor_call" or worker.state.get("actor") != msg.actor_id:
            if msg.refs:
                self.ops.consume(worker, msg.refs)
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

    def on_process_gone(self, proc) -> None:
        self.ops.died(proc)

    def on_peer_saw_death(self, peer, dead_id: str, is_peer: bool) -> None:
        for w in list(peer.workers.values()):
            if w.refs is not None and w.alive:
                effects = w.refs.on_peer_died(dead_id) if is_peer else w.refs.on_process_died(dead_id)
                self.ops.run(w, effects)

    # ---- the end ----

    def idle(self) -> bool:
        for d in self.drivers:
            if d.alive:
                self._settle_creations(d)
        live = self.cluster.live_process
        if self.holds:
            return False
        return not any(live(c.rec.task_id.split(".", 1)[0]) for c in self.calls.values())

    def metrics(self) -> dict:
        owned = [o for a in self.actors.values() if (o := a.owned()) is not None]
        return {"actors": len(self.actors), "actor_restarts": sum(max(0, o.incarnation - 1) for o in owned),
                "actors_dead": sum(1 for o in owned if o.state == "dead"),
                "actor_calls": self.calls_made, "actor_calls_failed": self.calls_failed,
                "objects_created": self.truth.created, "objects_freed": len(self.truth.freed)}


def _derive(master):
    import random
    return random.Random(master.getrandbits(64))

"""Actors, seen from their owner (creator) and from their callers.

The owner places an actor like a task — a lease for its shape — but keeps the lease for the actor's life.
It restarts the actor on a new lease when its worker dies, up to `max_restarts`, and tells every caller
that asked (`ResolveActor`) where the actor runs now (`ActorLocation`). An actor is also an object owned by
its creator: every `ActorHandle` counts as a ref to the actor id, every call in flight pins it, and when no
handle is left anywhere the owner stops the actor (unless it is detached).

Callers push calls straight to the actor's worker, through one connection per caller, so calls from one
caller run in the order they were made. Order is kept from the moment of submission: a call whose arguments
are still being computed holds back every later call of the same caller (`_Caller.order`), as in Ray, so
`[a.f.remote(dep_i) for ...]` runs in list order however the dependencies finish. Calls made before the
location is known wait here, in order; calls retried after a restart go back to the front, in order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p2pcompute import serialization
from p2pcompute.errors import ActorDiedError, ActorUnavailableError, TaskCancelledError
from p2pcompute.lease import messages as lm
from p2pcompute.runtime import messages as rm

if TYPE_CHECKING:
    from p2pcompute.lease.submitter import Held
    from p2pcompute.runtime.client import ClientRuntime, TaskRecord


@dataclass(eq=False)
class _Owned:
    actor_id: str
    name: str
    create: "TaskRecord"
    restarts_left: int
    detached: bool
    held: "Held | None" = None
    incarnation: int = 0
    state: str = "pending"
    error: bytes | None = None
    subscribers: set = field(default_factory=set)
    killed: bool = False
    name_key: str | None = None      # claimed in the table; released when the actor dies for good
    name_record: dict | None = None


@dataclass(eq=False)
class _Caller:
    actor_id: str
    owner_addr: str

    @property
    def owner_id(self) -> str:
        return self.actor_id.split(".", 1)[0]

    state: str = "unknown"   # unknown | pending | alive | restarting | dead
    addr: str = ""
    ctl_addr: str = ""
    worker_id: str = ""
    incarnation: int = -1
    error: bytes | None = None
    # Submitted calls not yet handed on, in submission order: a call leaves only from the front, once its
    # arguments are ready (or it has finished early: failed argument, cancelled).
    order: deque = field(default_factory=deque)
    queue: deque = field(default_factory=deque)     # ready calls waiting for a location, in order
    inflight: dict = field(default_factory=dict)
    resolving: bool = False
    seq: int = 0
    killed: bool = False  # killed by this process: no later news may bring it back


class ActorManager:
    def __init__(self, runtime: "ClientRuntime"):
        self.rt = runtime
        self.owned: dict[str, _Owned] = {}
        self.callers: dict[str, _Caller] = {}
        self._by_lease: dict[str, str] = {}

    # ---- helpers ------------------------------------------------------------------------------------

    def owner_of(self, actor_id: str) -> str:
        caller = self.callers.get(actor_id)
        if caller is not None:
            return caller.owner_addr
        entry = self.rt.refs._entries.get(actor_id)
        return entry.owner_addr if entry is not None else self.rt.addr

    def _caller(self, actor_id: str, owner_addr: str) -> _Caller:
        caller = self.callers.get(actor_id)
        if caller is None:
            caller = self.callers[actor_id] = _Caller(actor_id, owner_addr)
        return caller

    def register_handle(self, actor_id: str, owner_addr: str) -> None:
        self._caller(actor_id, owner_addr)

    # ---- owner side ---------------------------------------------------------------------------------

    def create(self, rec: "TaskRecord", max_restarts: int, detached: bool, name_key: str | None = None,
               name_record: dict | None = None) -> None:
        """I/O thread: place a new actor. `rec` is its creation task (its return id is the actor id)."""
        actor_id = rec.actor_id
        owned = _Owned(actor_id, rec.name, rec, max_restarts, detached, name_key=name_key,
                       name_record=name_record)
        self.owned[actor_id] = owned
        self._caller(actor_id, self.rt.addr).state = "pending"
        refs = self.rt.refs
        if name_key is not None and detached:
            # A detached actor's name holds it alive whoever holds handles. A named actor that is not detached
            # lives like any actor, as in Ray: until its last handle (or its owner) goes; then its name is free.
            refs.pin(actor_id, self.rt.addr)
        # The constructor's arguments must outlive the first construction: a restart runs it again.
        for oid, owner in rec.slot_refs + rec.nested_refs:
            refs.pin(oid, owner)
        if rec.args_object is not None:
            refs.pin(rec.args_object[0], self.rt.addr)
        self.rt._submit(rec)

    def on_placed(self, task_id: str, held: "Held") -> None:
        rec = self.rt.tasks.get(task_id)
        if rec is None:
            self.rt._send(held.peer_addr, lm.ReturnLease(held.lease_id, True))
            return
        owned = self.owned.get(rec.actor_id)
        if owned is None or owned.killed:
            self.rt._send(held.peer_addr, lm.ReturnLease(held.lease_id, True))
            return
        owned.held = held
        owned.incarnation += 1
        owned.state = "alive"
        self._by_lease[held.lease_id] = owned.actor_id
        rec.held = held
        self.rt._send(held.worker_addr, self.rt.push_message(rec, held.worker_id))
        self._publish(owned)

    def on_created(self, rec: "TaskRecord", reply) -> None:
        pass  # the actor object resolved to "ready"; it was already reachable since placement

    def on_create_failed(self, rec: "TaskRecord", error: bytes) -> None:
        owned = self.owned.get(rec.actor_id)
        if owned is None:
            return
        # A constructor that raises kills the actor for good: re-running it would raise again.
        self._die(owned, error)

    def _die(self, owned: _Owned, error: bytes) -> None:
        owned.state = "dead"
        owned.error = error
        if owned.held is not None:
            self._by_lease.pop(owned.held.lease_id, None)
            self.rt._send(owned.held.peer_addr, lm.ReturnLease(owned.held.lease_id, True))
            owned.held = None
        refs = self.rt.refs
        effects: list = []
        rec = owned.create
        for oid, _ in rec.slot_refs + rec.nested_refs:
            effects += refs.unpin(oid)
        if rec.args_object is not None:
            effects += refs.unpin(rec.args_object[0])
        self._publish(owned)
        if owned.name_key is not None:
            self.rt.table_async(("release", owned.name_key, owned.name_record))
            if owned.detached:
                effects += refs.unpin(owned.actor_id)
            owned.name_key = None
        self.rt._run(effects)

    def _worker_lost(self, owned: _Owned, reason: str) -> None:
        if owned.held is not None:
            self._by_lease.pop(owned.held.lease_id, None)
            owned.held = None
        if owned.killed:
            self._die(owned, serialization.system_error_bytes(
                ActorDiedError(f"actor {owned.name} ({owned.actor_id}) was killed")))
            return
        if owned.restarts_left == 0:
            self._die(owned, serialization.system_error_bytes(ActorDiedError(
                f"actor {owned.name} ({owned.actor_id}) died ({reason}) and has no restarts left")))
            return
        if owned.restarts_left > 0:
            owned.restarts_left -= 1
        owned.state = "restarting"
        self._publish(owned)
        self._restart(owned)

    def _restart(self, owned: _Owned) -> None:
        from p2pcompute.runtime.client import TaskRecord
        old = owned.create
        rec = TaskRecord(self.rt.new_id(), "actor_create", old.name, old.code_id, old.code,
                         old.args, old.args_object, old.slot_refs, old.nested_refs, old.return_ids, old.shape,
                         old.options, 0, False, actor_id=old.actor_id)
        owned.create = rec
        for oid in rec.return_ids:
            self.rt.objects.reset(oid)
        self.rt._submit(rec)

    def on_lease_revoked(self, lease_id: str, reason: str) -> bool:
        actor_id = self._by_lease.get(lease_id)
        if actor_id is None:
            return False
        owned = self.owned.get(actor_id)
        if owned is not None:
            self._worker_lost(owned, reason)
        return True

    def kill(self, actor_id: str, no_restart: bool) -> None:
        if no_restart:
            # Dead from this moment for this caller: a call made after kill() returns must not run, even if
            # the worker has not been stopped yet.
            caller = self.callers.get(actor_id)
            if caller is not None:
                caller.state = "dead"
                caller.killed = True
                caller.error = serialization.system_error_bytes(ActorDiedError(f"actor {actor_id} was killed"))
                self._lose_inflight(caller, "the actor was killed")
                while caller.queue:
                    self._fail_call(caller.queue.popleft(), caller.error)
        owned = self.owned.get(actor_id)
        if owned is None:
            caller = self.callers.get(actor_id)
            if caller is not None:
                self.rt._send(caller.owner_addr, rm.KillActor(actor_id, no_restart))
            return
        if no_restart:
            owned.killed = True
            if owned.name_key is not None:
                # The name is free from this moment, so get_actor() after kill() never finds the dead actor.
                self.rt.table_async(("release", owned.name_key, owned.name_record))
                owned.name_key = None
                if owned.detached:
                    self.rt._run(self.rt.refs.unpin(actor_id))
        if owned.held is not None:
            self.rt._send(owned.held.peer_addr, rm.ForceKillWorker(owned.held.worker_id, "kill(actor)"))
        elif owned.state in ("pending", "restarting") and no_restart:
            self._die(owned, serialization.system_error_bytes(
                ActorDiedError(f"actor {owned.name} ({owned.actor_id}) was killed")))

    def on_handle_freed(self, actor_id: str) -> None:
        """No handle to an owned actor is left anywhere: stop it, unless it is detached."""
        owned = self.owned.get(actor_id)
        if owned is None or owned.detached:
            self.callers.pop(actor_id, None)
            return
        owned.killed = True
        if owned.name_key is not None:
            self.rt.table_async(("release", owned.name_key, owned.name_record))
            owned.name_key = None
        if owned.held is not None:
            self.rt._send(owned.held.peer_addr, lm.ReturnLease(owned.held.lease_id, True))
            self._by_lease.pop(owned.held.lease_id, None)
            owned.held = None
        del self.owned[actor_id]
        self.callers.pop(actor_id, None)

    def _publish(self, owned: _Owned) -> None:
        held = owned.held
        loc = rm.ActorLocation(owned.actor_id, owned.state, held.worker_id if held else "",
                               held.worker_addr if held else "", held.worker_ctl_addr if held else "",
                               owned.incarnation, owned.error)
        self._on_location(loc)
        for addr in owned.subscribers:
            self.rt._send(addr, loc)
        if owned.state == "dead":
            owned.subscribers.clear()

    def release_all(self) -> list:
        effects = []
        for owned in self.owned.values():
            if owned.held is not None and not owned.detached:
                effects.append(_send(owned.held.peer_addr, lm.ReturnLease(owned.held.lease_id, True)))
        return effects

    # ---- caller side --------------------------------------------------------------------------------

    def submit_call(self, rec: "TaskRecord") -> None:
        """A call was submitted: it takes its place in the caller's order before its arguments resolve."""
        caller = self.callers.get(rec.actor_id)
        if caller is None:
            caller = self._caller(rec.actor_id, self.owner_of(rec.actor_id))
        caller.order.append(rec)

    def call_ready(self, rec: "TaskRecord") -> None:
        """The call's arguments are ready: it goes on as soon as every earlier call of this caller has."""
        rec.order_ready = True
        self._pump(rec.actor_id)

    def call_finished(self, rec: "TaskRecord") -> None:
        """A call finished before it was handed on (an argument failed, or it was cancelled)."""
        caller = self.callers.get(rec.actor_id)
        if caller is not None and caller.order and caller.order[0] is rec:
            self._pump(rec.actor_id)

    def _pump(self, actor_id: str) -> None:
        caller = self.callers.get(actor_id)
        if caller is None:
            return
        order = caller.order
        while order:
            head = order[0]
            if head.done:
                order.popleft()
            elif head.order_ready:
                order.popleft()
                self.schedule_call(head)
            else:
                break

    def schedule_call(self, rec: "TaskRecord") -> None:
        caller = self.callers.get(rec.actor_id)
        if caller is None:
            caller = self._caller(rec.actor_id, self.owner_of(rec.actor_id))
        if caller.state == "alive":
            self._push_call(caller, rec)
        elif caller.state == "dead":
            self._fail_call(rec, caller.error)
        else:
            caller.queue.append(rec)
            self._resolve(caller)

    def _resolve(self, caller: _Caller) -> None:
        if caller.resolving or caller.actor_id in self.owned:
            return
        caller.resolving = True
        self.rt._send(caller.owner_addr, rm.ResolveActor(caller.actor_id, self.rt.addr))

    def _push_call(self, caller: _Caller, rec: "TaskRecord") -> None:
        caller.seq += 1
        rec.seq = caller.seq
        caller.inflight[rec.task_id] = rec
        self.rt._send(caller.addr, self.rt.push_message(rec, caller.worker_id, caller.seq))

    def on_call_done(self, rec: "TaskRecord") -> None:
        caller = self.callers.get(rec.actor_id)
        if caller is not None:
            caller.inflight.pop(rec.task_id, None)

    def _fail_call(self, rec: "TaskRecord", error: bytes | None) -> None:
        if error is None:
            error = serialization.system_error_bytes(ActorDiedError(f"actor {rec.actor_id} is dead"))
        self.rt._finish_with_error(rec, error)

    def cancel_call(self, rec: "TaskRecord", force: bool) -> None:
        caller = self.callers.get(rec.actor_id)
        if caller is None:
            return
        if rec in caller.order or rec in caller.queue:
            if rec in caller.queue:
                caller.queue.remove(rec)
            self.rt._finish_with_error(rec, serialization.system_error_bytes(
                TaskCancelledError(f"actor call {rec.name} ({rec.task_id}) was cancelled")))
        elif rec.task_id in caller.inflight:
            self.rt._send(caller.ctl_addr, rm.CancelTask(rec.task_id, False, False, self.rt.addr))

    def _on_location(self, loc: rm.ActorLocation) -> None:
        caller = self.callers.get(loc.actor_id)
        if caller is None:
            return
        caller.resolving = False
        if loc.incarnation < caller.incarnation or caller.killed:
            return  # an older location overtaken by a newer one, or news from before our kill()
        changed_worker = caller.worker_id and caller.worker_id != loc.worker_id
        caller.state = loc.state
        caller.incarnation = loc.incarnation
        caller.error = loc.error
        if loc.state == "alive":
            if changed_worker:
                self._lose_inflight(caller, "the actor restarted on a new worker")
            caller.addr, caller.ctl_addr, caller.worker_id = loc.addr, loc.ctl_addr, loc.worker_id
            while caller.queue:
                self._push_call(caller, caller.queue.popleft())
        elif loc.state == "dead":
            self._lose_inflight(caller, "the actor died")
            while caller.queue:
                self._fail_call(caller.queue.popleft(), loc.error)
        elif loc.state == "restarting":
            self._lose_inflight(caller, "the actor's worker died")

    def _lose_inflight(self, caller: _Caller, why: str) -> None:
        retried = []
        for rec in list(caller.inflight.values()):
            caller.inflight.pop(rec.task_id, None)
            retries = rec.options.get("max_task_retries", 0)
            if rec.cancelled:
                self.rt._finish_with_error(rec, serialization.system_error_bytes(
                    TaskCancelledError(f"actor call {rec.name} ({rec.task_id}) was cancelled")))
            elif retries != 0 and caller.state != "dead":
                rec.options["max_task_retries"] = retries - 1 if retries > 0 else retries
                retried.append(rec)
            elif caller.state == "dead":
                self._fail_call(rec, caller.error or serialization.system_error_bytes(ActorDiedError(
                    f"actor call {rec.name} ({rec.task_id}) was lost: {why}")))
            else:
                # The actor lives on (restarting): the call may or may not have run, so it is not retried
                # unless the caller said calls are safe to repeat.
                self._fail_call(rec, serialization.system_error_bytes(ActorUnavailableError(
                    f"actor call {rec.name} ({rec.task_id}) was lost: {why}; the actor is restarting. Set "
                    f"max_task_retries to retry calls across actor restarts")))
        # Retried calls go back in front of the calls not yet pushed, in the order they were first pushed.
        caller.queue.extendleft(reversed(retried))

    def on_process_died(self, msg: rm.ProcessDied, is_dead) -> None:
        """`is_dead(proc_id)` tells whether a process died with this news (one process, or a whole peer)."""
        for owned in list(self.owned.values()):
            if owned.held is not None and is_dead(owned.held.worker_id):
                self._worker_lost(owned, msg.reason)
        for caller in self.callers.values():
            if caller.actor_id in self.owned:
                continue
            if is_dead(caller.owner_id):
                caller.state = "dead"
                caller.error = serialization.system_error_bytes(ActorDiedError(
                    f"actor {caller.actor_id}: its owner (the process that created it) died"))
                self._lose_inflight(caller, "its owner died")
                while caller.queue:
                    self._fail_call(caller.queue.popleft(), caller.error)
            elif caller.worker_id and is_dead(caller.worker_id):
                caller.state = "restarting"
                self._lose_inflight(caller, f"the actor's worker died ({msg.reason})")
                self._resolve(caller)

    # ---- messages -----------------------------------------------------------------------------------

    def dispatch(self, sender: str, msg) -> None:
        t = type(msg)
        if t is rm.ActorLocation:
            self._on_location(msg)
        elif t is rm.ResolveActor:
            owned = self.owned.get(msg.actor_id)
            if owned is None:
                self.rt._send(msg.reply_to, rm.ActorLocation(msg.actor_id, "dead", "", "", "", 1 << 30,
                                                             serialization.system_error_bytes(ActorDiedError(
                                                                 f"actor {msg.actor_id} no longer exists"))))
                return
            if owned.state != "dead":
                owned.subscribers.add(msg.reply_to)
            held = owned.held
            self.rt._send(msg.reply_to, rm.ActorLocation(
                owned.actor_id, owned.state, held.worker_id if held else "", held.worker_addr if held else "",
                held.worker_ctl_addr if held else "", owned.incarnation, owned.error))
        elif t is rm.KillActor:
            self.kill(msg.actor_id, msg.no_restart)

    def on_tick(self, now_ns: int) -> None:
        pass


def _send(to, msg):
    from p2pcompute.net.effects import Send
    return Send(to, msg)

"""Actors, seen from their owner (creator) and from their callers: a pure core.

Theory of operation.

*Owner.* The creator places an actor like a task — a lease for its shape — but keeps the lease for the
actor's life. When the actor's worker dies it restarts the actor on a new lease, up to `max_restarts`, and
tells every caller that asked (`ResolveActor`) where the actor runs now (`ActorLocation`, with an
incarnation number that only grows). An actor is also an object owned by its creator: every handle counts
as a ref to the actor id, every call in flight pins it, and when no handle is left anywhere the owner stops
the actor — unless it is detached, whose name (or keeper) holds it alive.

*Caller.* Calls go straight to the actor's worker, over one connection per caller, so they run in the order
they were made. Order is taken at submission (`order`): a call whose arguments are still being computed
holds back every later call of the same caller, as in Ray, so `[a.f.remote(dep_i) ...]` runs in list order
however the dependencies finish. Ready calls wait for a location in `queue`; pushed calls are `inflight`
until their reply. When the actor restarts, calls in flight are lost: retried in their first order (in
front of the queue) when `max_task_retries` allows, failed with `ActorUnavailableError` otherwise (the call
may or may not have run), and with `ActorDiedError` when the actor is dead for good.

Pure: no sockets, no clock, no runtime. Inputs are method calls (the client's events and the actor
messages); outputs are effects the driver (`runtime/actors.py`) carries out. Task records are the owner's
`TaskRecord`s, of which this core reads the identity and call options and sets only the fields named
`order_ready`, `seq` and `held`, and `options["max_task_retries"]` as retries are used.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from p2pcompute import serialization
from p2pcompute.errors import ActorDiedError, ActorUnavailableError, TaskCancelledError
from p2pcompute.lease import messages as lm
from p2pcompute.net.effects import Send
from p2pcompute.ownership import task_messages as am

# ---- effects --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushCall:
    """Send the actor call `rec` to the actor's worker at `addr`, as call number `seq` of this caller."""

    rec: Any
    addr: str
    worker_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class PushCreate:
    """Send the constructor task `rec` to the worker of the lease `held`."""

    rec: Any
    held: Any


@dataclass(frozen=True, slots=True)
class SubmitTask:
    """Submit `rec` (an actor's creation task) for scheduling."""

    rec: Any


@dataclass(frozen=True, slots=True)
class Restart:
    """Run the actor's constructor again on a new lease: a new creation task made from `old`."""

    actor_id: str
    old: Any


@dataclass(frozen=True, slots=True)
class FailTask:
    """Finish `rec` with `error` (a packed error) without running it (again)."""

    rec: Any
    error: bytes


@dataclass(frozen=True, slots=True)
class ReleaseName:
    """Free the actor's name in the table (the record guards against freeing a newer claim)."""

    key: str
    record: dict | None


@dataclass(frozen=True, slots=True)
class Pin:
    object_id: str
    owner_addr: str


@dataclass(frozen=True, slots=True)
class Unpin:
    object_id: str


# ---- records ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class OwnedActor:
    actor_id: str
    name: str
    create: Any                      # the creation task record; replaced on each restart
    restarts_left: int               # -1: for ever
    detached: bool
    held: Any = None                 # the lease the actor runs on
    incarnation: int = 0
    state: str = "pending"           # pending | alive | restarting | dead
    error: bytes | None = None       # why it is dead
    subscribers: set = field(default_factory=set)  # callers to tell of every change
    killed: bool = False
    name_key: str | None = None      # claimed in the table; released when the actor dies for good
    name_record: dict | None = None


@dataclass(eq=False)
class ActorCaller:
    actor_id: str
    owner_addr: str
    state: str = "unknown"           # unknown | pending | alive | restarting | dead
    addr: str = ""
    ctl_addr: str = ""
    worker_id: str = ""
    incarnation: int = -1
    error: bytes | None = None
    # Submitted calls not yet handed on, in submission order: a call leaves only from the front, once its
    # arguments are ready (or it has finished early: failed argument, cancelled).
    order: deque = field(default_factory=deque)
    queue: deque = field(default_factory=deque)     # ready calls waiting for a location, in order
    inflight: dict = field(default_factory=dict)    # task id -> pushed call, in push order
    resolving: bool = False
    seq: int = 0
    killed: bool = False  # killed by this process: no later news may bring it back

    @property
    def owner_id(self) -> str:
        return self.actor_id.split(".", 1)[0]


def _died(text: str, actor_id: str | None = None) -> bytes:
    return serialization.system_error_bytes(ActorDiedError(text, actor_id=actor_id))


class ActorCore:
    """The actor machines of one process: the actors it owns and the actors it calls."""

    def __init__(self, addr: str):
        self.addr = addr
        self.owned: dict[str, OwnedActor] = {}
        self.callers: dict[str, ActorCaller] = {}
        self._by_lease: dict[str, str] = {}

    def caller(self, actor_id: str, owner_addr: str) -> ActorCaller:
        caller = self.callers.get(actor_id)
        if caller is None:
            caller = self.callers[actor_id] = ActorCaller(actor_id, owner_addr)
        return caller

    # ---- owner side -------------------------------------------------------------------------------------

    def create(self, rec, max_restarts: int, detached: bool, name_key: str | None = None,
               name_record: dict | None = None) -> list:
        """Place a new actor. `rec` is its creation task (its return id is the actor id)."""
        actor_id = rec.actor_id
        self.owned[actor_id] = OwnedActor(actor_id, rec.name, rec, max_restarts, detached, name_key=name_key,
                                          name_record=name_record)
        self.caller(actor_id, self.addr).state = "pending"
        effects: list = []
        if name_key is not None and detached:
            # A detached actor's name holds it alive whoever holds handles. A named actor that is not detached
            # lives like any actor, as in Ray: until its last handle (or its owner) goes; then its name is free.
            effects.append(Pin(actor_id, self.addr))
        # The constructor's arguments must outlive the first construction: a restart runs it again.
        effects += [Pin(oid, owner) for oid, owner in rec.slot_refs + rec.nested_refs]
        if rec.args_object is not None:
            effects.append(Pin(rec.args_object[0], self.addr))
        effects.append(SubmitTask(rec))
        return effects

    def restarted(self, actor_id: str, rec) -> list:
        """The driver made `rec`, the new creation task of a restart: submit it."""
        owned = self.owned.get(actor_id)
        if owned is None:
            return []
        owned.create = rec
        return [SubmitTask(rec)]

    def on_placed(self, rec, held) -> list:
        """The creation task `rec` (None if it is gone) got the lease `held`."""
        owned = self.owned.get(rec.actor_id) if rec is not None else None
        if owned is None or owned.killed:
            return [Send(held.peer_addr, lm.ReturnLease(held.lease_id, True))]
        owned.held = held
        owned.incarnation += 1
        owned.state = "alive"
        self._by_lease[held.lease_id] = owned.actor_id
        return [PushCreate(rec, held)] + self._publish(owned)

    def on_create_failed(self, rec, error: bytes) -> list:
        owned = self.owned.get(rec.actor_id)
        if owned is None:
            return []
        # A constructor that raises kills the actor for good: re-running it would raise again.
        return self._die(owned, error)

    def _die(self, owned: OwnedActor, error: bytes) -> list:
        owned.state = "dead"
        owned.error = error
        effects: list = []
        if owned.held is not None:
            self._by_lease.pop(owned.held.lease_id, None)
            effects.append(Send(owned.held.peer_addr, lm.ReturnLease(owned.held.lease_id, True)))
            owned.held = None
        rec = owned.create
        effects += [Unpin(oid) for oid, _ in rec.slot_refs + rec.nested_refs]
        if rec.args_object is not None:
            effects.append(Unpin(rec.args_object[0]))
        effects += self._publish(owned)
        effects += self._release_name(owned)
        return effects

    def _release_name(self, owned: OwnedActor) -> list:
        if owned.name_key is None:
            return []
        effects: list = [ReleaseName(owned.name_key, owned.name_record)]
        if owned.detached:
            effects.append(Unpin(owned.actor_id))
        owned.name_key = None
        return effects

    def _worker_lost(self, owned: OwnedActor, reason: str) -> list:
        if owned.held is not None:
            self._by_lease.pop(owned.held.lease_id, None)
            owned.held = None
        if owned.killed:
            return self._die(owned, _died(f"actor {owned.name} ({owned.actor_id}) was killed", owned.actor_id))
        if owned.restarts_left == 0:
            return self._die(owned, _died(
                f"actor {owned.name} ({owned.actor_id}) died ({reason}) and has no restarts left", owned.actor_id))
        if owned.restarts_left > 0:
            owned.restarts_left -= 1
        owned.state = "restarting"
        return self._publish(owned) + [Restart(owned.actor_id, owned.create)]

    def on_lease_revoked(self, lease_id: str, reason: str) -> tuple[bool, list]:
        """(whether the lease was an actor's, effects)."""
        actor_id = self._by_lease.get(lease_id)
        if actor_id is None:
            return False, []
        owned = self.owned.get(actor_id)
        return True, (self._worker_lost(owned, reason) if owned is not None else [])

    def kill(self, actor_id: str, no_restart: bool) -> list:
        effects: list = []
        caller = self.callers.get(actor_id)
        if no_restart and caller is not None:
            # Dead from this moment for this caller: a call made after kill() returns must not run, even if
            # the worker has not been stopped yet.
            caller.state = "dead"
            caller.killed = True
            caller.error = _died(f"actor {actor_id} was killed", actor_id)
            effects += self._lose_inflight(caller, "the actor was killed")
            while caller.queue:
                effects.append(FailTask(caller.queue.popleft(), caller.error))
        owned = self.owned.get(actor_id)
        if owned is None:
            if caller is not None:
                effects.append(Send(caller.owner_addr, am.KillActor(actor_id, no_restart)))
            return effects
        if no_restart:
            owned.killed = True
            # The name is free from this moment, so get_actor() after kill() never finds the dead actor.
            effects += self._release_name(owned)
        if owned.held is not None:
            effects.append(Send(owned.held.peer_addr, am.ForceKillWorker(owned.held.worker_id, "kill(actor)")))
        elif owned.state in ("pending", "restarting") and no_restart:
            effects += self._die(owned, _died(f"actor {owned.name} ({owned.actor_id}) was killed",
                                              owned.actor_id))
        return effects

    def on_handle_freed(self, actor_id: str) -> list:
        """No handle to an owned actor is left anywhere: stop it, unless it is detached."""
        owned = self.owned.get(actor_id)
        if owned is None or owned.detached:
            self.callers.pop(actor_id, None)
            return []
        owned.killed = True
        effects = self._release_name(owned)
        if owned.held is not None:
            effects.append(Send(owned.held.peer_addr, lm.ReturnLease(owned.held.lease_id, True)))
            self._by_lease.pop(owned.held.lease_id, None)
            owned.held = None
        del self.owned[actor_id]
        self.callers.pop(actor_id, None)
        return effects

    def _publish(self, owned: OwnedActor) -> list:
        loc = self._location(owned)
        effects = self.on_location(loc)
        effects += [Send(addr, loc) for addr in sorted(owned.subscribers)]
        if owned.state == "dead":
            owned.subscribers.clear()
        return effects

    @staticmethod
    def _location(owned: OwnedActor) -> am.ActorLocation:
        held = owned.held
        return am.ActorLocation(owned.actor_id, owned.state, held.worker_id if held else "",
                                held.worker_addr if held else "", held.worker_ctl_addr if held else "",
                                owned.incarnation, owned.error)

    def release_all(self) -> list:
        """This process is leaving: give back the leases of the actors it owns (detached ones stay)."""
        return [Send(owned.held.peer_addr, lm.ReturnLease(owned.held.lease_id, True))
                for owned in self.owned.values() if owned.held is not None and not owned.detached]

    def on_resolve(self, msg: am.ResolveActor) -> list:
        owned = self.owned.get(msg.actor_id)
        if owned is None:
            return [Send(msg.reply_to, am.ActorLocation(msg.actor_id, "dead", "", "", "", 1 << 30,
                                                        _died(f"actor {msg.actor_id} no longer exists", msg.actor_id)))]
        if owned.state != "dead":
            owned.subscribers.add(msg.reply_to)
        return [Send(msg.reply_to, self._location(owned))]

    # ---- caller side ------------------------------------------------------------------------------------

    def submit_call(self, rec, owner_addr: str) -> list:
        """A call was submitted: it takes its place in the caller's order before its arguments resolve."""
        self.caller(rec.actor_id, owner_addr).order.append(rec)
        return []

    def call_ready(self, rec) -> list:
        """The call's arguments are ready: it goes on as soon as every earlier call of this caller has."""
        rec.order_ready = True
        return self._pump(rec.actor_id)

    def call_finished(self, rec) -> list:
        """A call finished (replied, failed, or cancelled before it was handed on)."""
        caller = self.callers.get(rec.actor_id)
        if caller is None:
            return []
        caller.inflight.pop(rec.task_id, None)
        if caller.order and caller.order[0] is rec:
            return self._pump(rec.actor_id)
        return []

    def _pump(self, actor_id: str) -> list:
        caller = self.callers.get(actor_id)
        if caller is None:
            return []
        effects: list = []
        order = caller.order
        while order:
            head = order[0]
            if head.done:
                order.popleft()
            elif head.order_ready:
                order.popleft()
                effects += self._schedule_call(caller, head)
            else:
                break
        return effects

    def _schedule_call(self, caller: ActorCaller, rec) -> list:
        if caller.state == "alive":
            return [self._push_call(caller, rec)]
        if caller.state == "dead":
            return [FailTask(rec, caller.error or _died(f"actor {rec.actor_id} is dead", rec.actor_id))]
        caller.queue.append(rec)
        return self._resolve(caller)

    def _resolve(self, caller: ActorCaller) -> list:
        if caller.resolving or caller.actor_id in self.owned:
            return []
        caller.resolving = True
        return [Send(caller.owner_addr, am.ResolveActor(caller.actor_id, self.addr))]

    def _push_call(self, caller: ActorCaller, rec) -> PushCall:
        caller.seq += 1
        rec.seq = caller.seq
        caller.inflight[rec.task_id] = rec
        return PushCall(rec, caller.addr, caller.worker_id, caller.seq)

    def cancel_call(self, rec, force: bool) -> list:
        caller = self.callers.get(rec.actor_id)
        if caller is None:
            return []
        if rec in caller.order or rec in caller.queue:
            if rec in caller.queue:
                caller.queue.remove(rec)
            return [FailTask(rec, serialization.system_error_bytes(
                TaskCancelledError(f"actor call {rec.name} ({rec.task_id}) was cancelled")))]
        if rec.task_id in caller.inflight:
            return [Send(caller.ctl_addr, am.CancelTask(rec.task_id, False, False, self.addr))]
        return []

    def on_location(self, loc: am.ActorLocation) -> list:
        caller = self.callers.get(loc.actor_id)
        if caller is None:
            return []
        caller.resolving = False
        if loc.incarnation < caller.incarnation or caller.killed:
            return []  # an older location overtaken by a newer one, or news from before our kill()
        changed_worker = caller.worker_id and caller.worker_id != loc.worker_id
        caller.state = loc.state
        caller.incarnation = loc.incarnation
        caller.error = loc.error
        effects: list = []
        if loc.state == "alive":
            if changed_worker:
                effects += self._lose_inflight(caller, "the actor restarted on a new worker")
            caller.addr, caller.ctl_addr, caller.worker_id = loc.addr, loc.ctl_addr, loc.worker_id
            while caller.queue:
                effects.append(self._push_call(caller, caller.queue.popleft()))
        elif loc.state == "dead":
            effects += self._lose_inflight(caller, "the actor died")
            while caller.queue:
                effects.append(FailTask(caller.queue.popleft(),
                                        loc.error or _died(f"actor {loc.actor_id} died", loc.actor_id)))
        elif loc.state == "restarting":
            effects += self._lose_inflight(caller, "the actor's worker died")
        return effects

    def _lose_inflight(self, caller: ActorCaller, why: str) -> list:
        effects: list = []
        retried = []
        for rec in list(caller.inflight.values()):
            caller.inflight.pop(rec.task_id, None)
            retries = rec.options.get("max_task_retries", 0)
            if rec.cancelled:
                effects.append(FailTask(rec, serialization.system_error_bytes(
                    TaskCancelledError(f"actor call {rec.name} ({rec.task_id}) was cancelled"))))
            elif retries != 0 and caller.state != "dead":
                rec.options["max_task_retries"] = retries - 1 if retries > 0 else retries
                retried.append(rec)
            elif caller.state == "dead":
                effects.append(FailTask(rec, caller.error or _died(
                    f"actor call {rec.name} ({rec.task_id}) was lost: {why}", rec.actor_id)))
            else:
                # The actor lives on (restarting): the call may or may not have run, so it is not retried
                # unless the caller said calls are safe to repeat.
                effects.append(FailTask(rec, serialization.system_error_bytes(ActorUnavailableError(
                    f"actor call {rec.name} ({rec.task_id}) was lost: {why}; the actor is restarting. Set "
                    f"max_task_retries to retry calls across actor restarts", actor_id=rec.actor_id))))
        # Retried calls go back in front of the calls not yet pushed, in the order they were first pushed.
        caller.queue.extendleft(reversed(retried))
        return effects

    def on_process_died(self, reason: str, is_dead: Callable[[str], bool]) -> list:
        """`is_dead(proc_id)` tells whether a process died with this news (one process, or a whole peer)."""
        effects: list = []
        for owned in list(self.owned.values()):
            if owned.held is not None and is_dead(owned.held.worker_id):
                effects += self._worker_lost(owned, reason)
        for caller in self.callers.values():
            if caller.actor_id in self.owned:
                continue
            if is_dead(caller.owner_id):
                caller.state = "dead"
                caller.error = _died(f"actor {caller.actor_id}: its owner (the process that created it) died",
                                     caller.actor_id)
                effects += self._lose_inflight(caller, "its owner died")
                while caller.queue:
                    effects.append(FailTask(caller.queue.popleft(), caller.error))
            elif caller.worker_id and is_dead(caller.worker_id):
                caller.state = "restarting"
                effects += self._lose_inflight(caller, f"the actor's worker died ({reason})")
                effects += self._resolve(caller)
        return effects

    def on_message(self, now_ns: int, sender: str, msg) -> list:
        """The cores' one signature; the actor machines keep no clock and trust no sender, so both go unused."""
        t = type(msg)
        if t is am.ActorLocation:
            return self.on_location(msg)
        if t is am.ResolveActor:
            return self.on_resolve(msg)
        if t is am.KillActor:
            return self.kill(msg.actor_id, msg.no_restart)
        return []

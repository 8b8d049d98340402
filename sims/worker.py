"""A simulated worker process: runs pushed tasks one at a time for a sampled (virtual) service time.

A worker receives `PushTask` from whoever holds its lease, queues it, "runs" it for the task's service time
(carried in `options["service_ns"]`, drawn when the task was submitted) and answers the task's owner as the
runtime's worker does (`runtime/worker.py`): a `TaskReply` with one typed result per return id
(`ownership/wire_values.py`: inline, or stored in its peer's store), or with a system error when it could
not run the task — `ArgumentLostError` when no copy of a stored argument can be read (every peer that held
one is gone), `ActorDiedError` for a call to an actor this worker does not run. It executes nothing: what a
task does to references (borrow its arguments, keep some, return some inside its result) is decided by the
workload's hooks, `on_task_start` and `on_task_end`, which model the user's code.

An actor's worker runs its calls in arrival order. A call that overtakes the actor's constructor (the owner
publishes the actor's address when it pushes the constructor; a caller's push may arrive first) waits for it,
as in the runtime.

It dies with its peer (crash), on `StopWorker`, or alone (the `kill` fault); whatever it was running is
lost, and the owner learns of it through the lease core (`LeaseRevoked`) or membership.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from p2pcompute import serialization
from p2pcompute.errors import ActorDiedError, ArgumentLostError
from p2pcompute.ownership import task_messages as rm
from p2pcompute.ownership.wire_values import StoredSlot, slot_from_wire


@dataclass(frozen=True, slots=True)
class SystemFailure:
    """What `on_task_end` returns when the worker could not run the task: the reply's system error."""

    error: bytes


class SimWorker:
    __slots__ = ("peer", "worker_id", "addr", "ep", "alive", "queue", "running", "refs", "kept", "state",
                 "told_dead", "early")

    def __init__(self, peer, worker_id: str) -> None:
        self.peer = peer
        self.worker_id = worker_id
        # The address names the peer's incarnation too: with `--restart-id same`, a restarted peer's new
        # workers reuse worker ids, and a stale push must not reach a process that never leased itself.
        self.addr = f"sim://{worker_id}~{peer.key}"
        self.ep = peer.net.register(self.addr, peer, self.on_message)
        self.alive = True
        self.queue: deque = deque()
        self.running = None
        self.refs = None  # a ReferenceTable, created by the workload when it first needs one
        self.kept: dict = {}  # workload state: refs this process holds past a task (object id -> count)
        self.state: dict = {}  # workload state; "actor": the actor this worker runs, once constructed
        self.told_dead: set[str] = set()  # process ids and "<peer id>-" prefixes it was told died
        self.early: list = []  # actor calls that arrived before the actor's constructor ran

    def die(self) -> None:
        self.alive = False
        self.peer.net.unregister(self.ep)
        self.peer.cluster.workload.on_process_gone(self)

    def on_message(self, src: str, msg) -> None:
        if not self.alive:
            return
        if type(msg) is rm.PushTask:
            if msg.kind != "actor_call":
                self._check_holder(src, msg)
            self.queue.append(msg)
            if self.running is None:
                self._start_next()
        else:
            self.peer.cluster.workload.on_worker_message(self, src, msg)

    def _check_holder(self, src: str, msg) -> None:
        """A task may only come from the process that holds this worker's lease (per the lease audit). A
        push from another live process means the worker is used by two holders at once — a holder its peer
        wrote off as dead that lives on, for example."""
        cluster = self.peer.cluster
        sender = src[6:].split("~", 1)[0]
        holder = cluster.audit.holder_of(self.peer.key, self.worker_id)
        if holder != sender and cluster.live_process(sender):
            cluster.violations.add("lease_capacity", f"worker {self.worker_id} got task {msg.task_id} from {sender}, "
                                                     f"a live process that does not hold its lease (held by "
                                                     f"{holder or 'nobody'})")

    def _start_next(self) -> None:
        while self.queue:
            msg = self.queue.popleft()
            actor = self.state.get("actor")
            if msg.kind == "actor_call" and actor is None and self.state.get("actor_id") in (None, msg.actor_id):
                self.early.append(msg)  # waits for the constructor
                continue
            if msg.kind == "actor_create":
                self.state["actor_id"] = msg.actor_id
            self.running = msg
            self.peer.cluster.workload.on_task_start(self, msg)
            self.peer.later(msg.options.get("service_ns", 0), self._finish, msg)
            return

    def _finish(self, msg: rm.PushTask) -> None:
        if not self.alive or self.running is not msg:
            return
        peer = self.peer
        if msg.kind == "actor_call" and self.state.get("actor") != msg.actor_id:
            error = serialization.system_error_bytes(ActorDiedError(f"actor {msg.actor_id} is not running here"))
            returns = SystemFailure(error)
            peer.cluster.workload.on_task_end(self, msg)  # the user's code never ran; its refs are released
        else:
            returns = peer.cluster.workload.on_task_end(self, msg)
        if msg.kind == "actor_create":
            self.state["actor"] = msg.actor_id
            if self.early:
                self.queue.extendleft(reversed(self.early))
                self.early = []
        if self.alive:
            if type(returns) is SystemFailure:
                reply = rm.TaskReply(msg.task_id, [], 0, self.worker_id, peer.peer_id, returns.error)
            else:
                reply = rm.TaskReply(msg.task_id, returns, msg.options.get("service_ns", 0), self.worker_id,
                                     peer.peer_id, None)
            peer.net.send(self.ep, msg.owner_addr, reply)
        self.running = None
        if self.queue and self.alive:
            self._start_next()


def unreadable_argument(worker: SimWorker, msg: rm.PushTask) -> str | None:
    """The id of a stored argument of `msg` of which no copy can be read (every peer holding one is down or
    restarted since), else None. The simulated stores hold what they were told to; only their peers' deaths
    lose copies."""
    up = worker.peer.cluster.up
    for entry in msg.slots or ():
        slot = slot_from_wire(entry)
        if type(slot) is not StoredSlot:
            continue
        if not any((p := up.get(peer_id)) is not None and p.addr == peer_addr for peer_id, peer_addr, _ in slot.locations):
            return slot.object_id
    return None


def argument_lost(object_id: str) -> SystemFailure:
    return SystemFailure(serialization.system_error_bytes(ArgumentLostError(
        f"no copy of argument {object_id} could be read", object_id=object_id)))

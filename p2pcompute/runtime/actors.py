"""The client process's driver of the actor core (`p2pcompute/ownership/actors.py`).

It hands the client's events to the core and carries out what the core answers: sends, pushes of calls and
constructors, submissions, failures, pins and name releases. Everything that decides — ordering, restarts,
what a lost call becomes — is in the core, where unit tests step it without processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pcompute.net.effects import Send
from p2pcompute.ownership import task_messages as am
from p2pcompute.ownership.actors import (ActorCore, FailTask, Pin, PushCall, PushCreate, ReleaseName, Restart,
                                         SubmitTask, Unpin)

if TYPE_CHECKING:
    from p2pcompute.lease.submitter import Held
    from p2pcompute.runtime.client import ClientRuntime, TaskRecord


class ActorManager:
    handles = (am.ActorLocation, am.ResolveActor, am.KillActor)

    def __init__(self, runtime: "ClientRuntime"):
        self.rt = runtime
        self.core = ActorCore(runtime.addr)
        self.owned = self.core.owned      # read by the state API and the timeline
        self.callers = self.core.callers

    def owner_of(self, actor_id: str) -> str:
        caller = self.callers.get(actor_id)
        if caller is not None:
            return caller.owner_addr
        return self.rt.refs.owner_of(actor_id) or self.rt.addr

    def register_handle(self, actor_id: str, owner_addr: str) -> None:
        self.core.caller(actor_id, owner_addr)

    # ---- inputs -------------------------------------------------------------------------------------

    def create(self, rec: "TaskRecord", max_restarts: int, detached: bool, name_key: str | None = None,
               name_record: dict | None = None) -> None:
        """I/O thread: place a new actor. `rec` is its creation task (its return id is the actor id)."""
        self.run(self.core.create(rec, max_restarts, detached, name_key, name_record))

    def on_placed(self, task_id: str, held: "Held") -> None:
        self.run(self.core.on_placed(self.rt.tasks.get(task_id), held))

    def on_created(self, rec: "TaskRecord", reply) -> None:
        pass  # the actor object resolved to "ready"; it was already reachable since placement

    def on_create_failed(self, rec: "TaskRecord", error: bytes) -> None:
        self.run(self.core.on_create_failed(rec, error))

    def on_lease_revoked(self, lease_id: str, reason: str) -> bool:
        handled, effects = self.core.on_lease_revoked(lease_id, reason)
        self.run(effects)
        return handled

    def kill(self, actor_id: str, no_restart: bool) -> None:
        self.run(self.core.kill(actor_id, no_restart))

    def on_handle_freed(self, actor_id: str) -> None:
        self.run(self.core.on_handle_freed(actor_id))

    def release_all(self) -> list:
        return self.core.release_all()

    def submit_call(self, rec: "TaskRecord") -> None:
        self.run(self.core.submit_call(rec, self.owner_of(rec.actor_id)))

    def call_ready(self, rec: "TaskRecord") -> None:
        self.run(self.core.call_ready(rec))

    def call_finished(self, rec: "TaskRecord") -> None:
        self.run(self.core.call_finished(rec))

    on_call_done = call_finished

    def cancel_call(self, rec: "TaskRecord", force: bool) -> None:
        self.run(self.core.cancel_call(rec, force))

    def on_process_died(self, msg, is_dead) -> None:
        self.run(self.core.on_process_died(msg.reason, is_dead))

    def dispatch(self, sender: str, msg) -> None:
        self.run(self.core.on_message(msg))

    def on_tick(self, now_ns: int) -> None:
        pass

    # ---- effects ------------------------------------------------------------------------------------

    def run(self, effects: list) -> None:
        rt = self.rt
        for eff in effects:
            t = type(eff)
            if t is Send:
                rt._send(eff.to, eff.msg)
            elif t is PushCall:
                rt._send(eff.addr, rt.push_message(eff.rec, eff.worker_id, eff.seq))
            elif t is FailTask:
                if not eff.rec.done:
                    rt._finish_with_error(eff.rec, eff.error)
            elif t is PushCreate:
                eff.rec.held = eff.held
                rt._send(eff.held.worker_addr, rt.push_message(eff.rec, eff.held.worker_id))
            elif t is SubmitTask:
                rt._submit(eff.rec)
            elif t is Restart:
                self._restart(eff.actor_id, eff.old)
            elif t is Pin:
                rt.refs.pin(eff.object_id, eff.owner_addr)
            elif t is Unpin:
                rt._run(rt.refs.unpin(eff.object_id))
            elif t is ReleaseName:
                rt.table_async(("release", eff.key, eff.record))
            else:
                rt._run([eff])

    def _restart(self, actor_id: str, old: "TaskRecord") -> None:
        from p2pcompute.runtime.client import TaskRecord
        rec = TaskRecord(self.rt.new_id(), "actor_create", old.name, old.code_id, old.code,
                         old.args, old.args_object, old.slot_refs, old.nested_refs, old.return_ids, old.shape,
                         old.options, 0, False, actor_id=old.actor_id)
        for oid in rec.return_ids:
            self.rt.objects.reset(oid)
        self.run(self.core.restarted(actor_id, rec))

"""The owner: everything a process decides about the tasks it submitted and the objects it owns. A pure core.

Theory of operation.

*Tasks.* `submit` records a task and pins its arguments. Once every ref argument is ready (`_resolve_deps`,
`_on_resolved`) it is scheduled: a plain task goes to the submitter core, which leases a worker and answers
with `Push`; an actor call goes to the actor core, which keeps the caller's order. The worker's `TaskReply`
resolves the results — or retries the task (`max_retries` after a worker or peer death, `retry_exceptions`
after a user error), or fails it. An argument a worker could not read is rebuilt (or re-asked of its
owner) and the task runs again.

*Objects.* The directory (`ownership/directory.py`) holds each known value's state: inline bytes, locations
of stored copies, or an error. Borrowers ask the owner (`GetObject`) and are answered when the value is
ready (`ObjectStatus`); peers report new copies (`AddLocation`). References are counted by the reference
table core; when it says `Free`, the owner drops the value and tells the holders. (`ownership/copies.py`.)

*Lineage.* A finished task whose results are stored on other peers keeps its arguments pinned while those
results live, so a copy lost with its peer is rebuilt by running the task again (recursively through lost
arguments), at most `max_retries` times per object.

*Deaths.* A dead worker or peer hands back the tasks in flight there (retried or failed), the actors there
(restarted or dead), the copies there (rebuilt or re-asked), and the objects owned by dead processes
(`OwnerDiedError`: nothing can rebuild them).

Pure: no sockets, no clock reads. Time comes in as `now_ns`; what leaves is a list of effects — `Send`,
`Timer`, `ForgetAddress`, `ReleaseName` — that the client process (`runtime/client.py`) or the simulator
carries out. The reference table, the submitter and the actor core are this core's parts; their effects are
applied here. The directory's lock only guards the hand-off to user threads in `get` and `wait`.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

from p2pcompute import serialization
from p2pcompute.errors import (ArgumentLostError, ObjectLostError, OwnerDiedError, PeerUnavailableError,
                               RemoteProtocolError, TaskCancelledError, WorkerCrashedError)
from p2pcompute.lease import messages as lm
from p2pcompute.lease.submitter import (ActorPlaced, Held, Push, Steal, SubmitterConfig, SubmitterCore, TaskInfo,
                                        TasksLost)
from p2pcompute.net.effects import Send, Timer
from p2pcompute.ownership import messages as om
from p2pcompute.ownership import task_messages as tm
from p2pcompute.ownership.actors import (ActorCore, FailTask, Pin, PushCall, PushCreate, ReleaseName, Restart,
                                         SubmitTask, Unpin)
from p2pcompute.ownership.copies import ObjectOwner
from p2pcompute.ownership.directory import ERROR, INLINE, PENDING, STORED, ObjectTable
from p2pcompute.ownership.refcount import Free, ReferenceTable
from p2pcompute.ownership.task_record import TaskRecord
from p2pcompute.ownership.wire_values import (ErrorResult, InlineResult, InlineSlot, Result, StoredResult, StoredSlot,
                                              contained_of, result_from_wire, results_from_wire, slot_to_wire)

log = logging.getLogger("p2pcompute.owner")

INLINE_MAX_BYTES = 100 * 1024


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A task ended: ran (`error` None) or failed with `error` (packed). Reported only when the driver asks
    (`report_finished`): the simulator keeps its ledger with it; the client has no use for it."""

    task_id: str
    error: bytes | None


@dataclass(frozen=True, slots=True)
class ForgetAddress:
    """The process at `addr` is dead: drop its connection."""

    addr: str


class OwnerCore(ObjectOwner):
    """The owner's protocols of one process (a driver or a worker)."""

    def __init__(self, proc_id: str, addr: str, job_id: str, job_env: dict, peer_addr: str,
                 submitter_config: SubmitterConfig | None = None, objects: ObjectTable | None = None):
        self.proc_id = proc_id
        self.addr = addr
        self.job_id = job_id
        self.job_env = job_env
        self.peer_addr = peer_addr
        self.node_id = ""
        self.refs = ReferenceTable(proc_id, addr)
        # The directory; the client passes one its user threads can also wait on.
        self.objects = objects if objects is not None else ObjectTable()
        self.submitter = SubmitterCore(proc_id, addr, job_id, peer_addr, config=submitter_config)
        self.actors = ActorCore(addr)
        self.tasks: dict[str, TaskRecord] = {}
        self.task_of_object: dict[str, str] = {}
        self.dep_waiters: dict[str, list[TaskRecord]] = {}
        # object id -> the task that made it, for stored results that can be rebuilt if their copies are lost
        self.lineage: dict[str, TaskRecord] = {}
        self.sent_code: set = set()   # (worker id, code id) pairs already shipped: code goes once per worker
        self.sent_env: set = set()    # workers that have the job's environment
        self._counter = itertools.count(1)
        self._out: list = []          # effects for the driver, gathered by the current entry point
        self._now = 0
        self.report_finished = False  # emit TaskFinished effects
        self.peer_lost = ""           # why our own peer is gone, once it is

    def new_id(self) -> str:
        """A new object or task id: this process's id and a counter (any thread)."""
        return f"{self.proc_id}.{next(self._counter):x}"

    def _take(self) -> list:
        out, self._out = self._out, []
        return out

    def _send(self, to: str, msg) -> None:
        self._out.append(Send(to, msg))

    # ---- entry points ---------------------------------------------------------------------------------

    def submit(self, now_ns: int, rec: TaskRecord) -> list:
        self._now = now_ns
        self._submit(rec)
        return self._take()

    def on_tick(self, now_ns: int) -> list:
        self._now = now_ns
        self.apply(self.submitter.on_tick(now_ns))
        self.apply(self.refs.on_tick(now_ns))
        return self._take()

    def on_message(self, now_ns: int, sender: str, msg) -> list:
        """A message for the owner's protocols; unknown types are ignored (the driver routes the rest)."""
        self._now = now_ns
        handler = self._handlers.get(type(msg))
        if handler is not None:
            handler(self, sender, msg)
        return self._take()

    def handles(self, msg) -> bool:
        return type(msg) in self._handlers

    def run(self, now_ns: int, fn, *args) -> list:
        """Run one of the core's operations (`cancel`, `fetch`, ...) from the driver and take its effects."""
        self._now = now_ns
        fn(*args)
        return self._take()

    def apply(self, effects: list) -> None:
        """Carry out the effects of the core's parts (submitter, reference table, actor core)."""
        for eff in effects:
            t = type(eff)
            if t is Send or t is Timer:
                self._out.append(eff)
            elif t is Push:
                self._push(eff.task_id, eff.lease)
            elif t is TasksLost:
                self._lost_tasks(list(eff.task_ids), eff.why)
            elif t is Free:
                self._on_free(eff.object_id)
            elif t is ActorPlaced:
                self.apply(self.actors.on_placed(self.tasks.get(eff.task_id), eff.lease))
            elif t is Steal:
                self._send(eff.lease.worker_ctl_addr, tm.StealTasks(list(eff.task_ids), self.addr))
            elif t is PushCall:
                self._send(eff.addr, self.push_message(eff.rec, eff.worker_id, eff.seq))
            elif t is FailTask:
                if not eff.rec.done:
                    self._finish_with_error(eff.rec, eff.error)
            elif t is PushCreate:
                eff.rec.held = eff.held
                self._send(eff.held.worker_addr, self.push_message(eff.rec, eff.held.worker_id))
            elif t is SubmitTask:
                self._submit(eff.rec)
            elif t is Restart:
                self._restart_actor(eff.actor_id, eff.old)
            elif t is Pin:
                self.refs.pin(eff.object_id, eff.owner_addr)
            elif t is Unpin:
                self.apply(self.refs.unpin(eff.object_id))
            elif t is ReleaseName:
                self._out.append(eff)
            else:
                raise AssertionError(f"unknown effect {eff!r}")

    # ---- submitting -----------------------------------------------------------------------------------

    def _submit(self, rec: TaskRecord) -> None:
        if self.peer_lost:
            self.tasks[rec.task_id] = rec
            self._finish_with_error(rec, serialization.system_error_bytes(PeerUnavailableError(self.peer_lost)))
            return
        self.tasks[rec.task_id] = rec
        for oid in rec.return_ids:
            self.task_of_object[oid] = rec.task_id
        refs = self.refs
        # Submitted tasks hold their arguments until they finish, whatever the user does with the refs.
        for oid, owner in rec.slot_refs:
            refs.pin(oid, owner)
        for oid, owner in rec.nested_refs:
            refs.pin(oid, owner)
        if rec.args_object is not None:
            oid, size, path = rec.args_object[:3]
            if oid not in self.objects.values:  # first submission (not a retry): account for the blob
                self.objects.resolve(oid, STORED, size=size, locations=[[self.node_id, self.peer_addr, path]])
                self._send(self.peer_addr, om.ObjectSealed(oid, size, self.addr))
            refs.pin(oid, self.addr)
        if rec.kind == "actor_call":
            owner = self.owner_of_actor(rec.actor_id)
            refs.pin(rec.actor_id, owner)
            self.apply(self.actors.submit_call(rec, owner))  # its place in the caller's order is taken now
        self._resolve_deps(rec)

    def owner_of_actor(self, actor_id: str) -> str:
        caller = self.actors.callers.get(actor_id)
        if caller is not None:
            return caller.owner_addr
        return self.refs.owner_of(actor_id) or self.addr

    def _resolve_deps(self, rec: TaskRecord) -> None:
        waiting = 0
        values = self.objects.values
        fetch = []
        for oid, _owner in rec.slot_refs:
            v = values.get(oid)
            if v is None or v.state == PENDING:
                waiting += 1
                self.dep_waiters.setdefault(oid, []).append(rec)
                if not self.refs.is_owned(oid):
                    fetch.append(oid)
        rec.deps_left = waiting
        if fetch:
            self.fetch(fetch)
        if waiting == 0:
            self._schedule(rec)

    def _on_resolved(self, object_id: str) -> None:
        recs = self.dep_waiters.pop(object_id, None)
        if recs:
            for rec in recs:
                rec.deps_left -= 1
                if rec.deps_left == 0 and not rec.done:
                    self._schedule(rec)

    def _schedule(self, rec: TaskRecord) -> None:
        slots = []
        values = self.objects.values
        locality: dict = {}
        waiting = []
        for oid, owner in rec.slot_refs:
            v = values.get(oid)
            if v is None or v.state == PENDING:
                # Ready when counted, but reset since (its copies were lost and it is being rebuilt).
                waiting.append(oid)
            elif v.state == INLINE:
                slots.append(slot_to_wire(InlineSlot(v.data)))
            elif v.state == STORED:
                slots.append(slot_to_wire(StoredSlot(oid, v.size, [list(loc) for loc in v.locations], owner)))
                for peer_id, peer_addr, _path in v.locations:
                    entry = locality.get(peer_id)
                    locality[peer_id] = [(entry[0] if entry else 0) + v.size, peer_addr]
            else:
                # A failed argument fails the task with the same error, without running it.
                self._finish_with_error(rec, v.error or serialization.system_error_bytes(
                    ObjectLostError(f"argument {oid} failed")))
                return
        if waiting:
            rec.deps_left = len(waiting)
            for oid in waiting:
                self.dep_waiters.setdefault(oid, []).append(rec)
            self.fetch([oid for oid in waiting if not self.refs.is_owned(oid)])
            return
        if rec.args_object is not None:
            entry = locality.get(self.node_id)
            locality[self.node_id] = [(entry[0] if entry else 0) + rec.args_object[1], self.peer_addr]
        rec.slots = slots
        rec.locality = locality
        rec.scheduled = True
        if rec.kind == "actor_call":
            self.apply(self.actors.call_ready(rec))
            return
        self.apply(self.submitter.submit(self._now, self._task_info(rec)))

    def _task_info(self, rec: TaskRecord) -> TaskInfo:
        opts = rec.options
        first_target = None
        locality = {peer: entry[0] for peer, entry in rec.locality.items()}
        if rec.locality:
            # Ask first the peer holding most bytes of the arguments, if that is enough to matter.
            best_peer, (best_bytes, best_addr) = max(rec.locality.items(), key=lambda kv: kv[1][0])
            if best_bytes >= INLINE_MAX_BYTES and best_peer != self.node_id:
                first_target = best_addr
        strategy = opts.get("scheduling_strategy") or "DEFAULT"
        affinity = soft = None
        if isinstance(strategy, tuple):  # ("NODE_AFFINITY", node_id, soft)
            _, affinity, soft = strategy
            strategy = "DEFAULT"
        env = opts.get("env")
        key = (tuple(sorted(rec.shape.items())), rec.code_id, strategy, affinity,
               first_target, rec.kind == "actor_create" and rec.task_id, env and env["key"])
        # A task with an environment of its own runs on workers of that environment only: its lease is asked
        # for a job of its own, so no worker of the plain job (or of another environment) is reused for it.
        return TaskInfo(rec.task_id, key, rec.shape, strategy, affinity, bool(soft) if soft is not None else True,
                        locality, first_target, actor=rec.kind == "actor_create",
                        job_id=f"{self.job_id}~env-{env['key']}" if env else None)

    def push_message(self, rec: TaskRecord, worker_id: str, seq: int = 0) -> tm.PushTask:
        code = None
        if (worker_id, rec.code_id) not in self.sent_code:
            self.sent_code.add((worker_id, rec.code_id))
            code = rec.code
        env = None
        if worker_id not in self.sent_env:
            self.sent_env.add(worker_id)
            call_env = rec.options.get("env")
            env = dict(self.job_env, runtime_env=call_env["wire"]) if call_env else self.job_env
        for oid, owner in rec.nested_refs:
            self.apply(self.refs.on_sent(oid, owner, worker_id))
        return tm.PushTask(rec.task_id, rec.kind, rec.name, self.job_id, rec.code_id, code, env, rec.args,
                           rec.args_object, rec.slots or [], [list(r) for r in rec.nested_refs],
                           rec.return_ids, self.addr, rec.actor_id, rec.method, seq, rec.options.get("wire", {}))

    def push_not_sent(self, to: str, msg: tm.PushTask) -> None:
        """The runtime could not send `msg` to `to` (too big for one message). What a push carries once per
        worker — the job's environment, the function's code — never reached that worker: the next push there
        must carry them again, or the worker runs without the job's import path."""
        rec = self.tasks.get(msg.task_id)
        if rec is None:
            return
        worker_id = None
        if rec.held is not None and rec.held.worker_addr == to:
            worker_id = rec.held.worker_id
        elif rec.actor_id:
            caller = self.actors.callers.get(rec.actor_id)
            if caller is not None and caller.addr == to:
                worker_id = caller.worker_id
        if not worker_id:
            return
        if msg.job_env is not None:
            self.sent_env.discard(worker_id)
        if msg.code is not None:
            self.sent_code.discard((worker_id, msg.code_id))

    def _push(self, task_id: str, held: Held) -> None:
        rec = self.tasks.get(task_id)
        if rec is None or rec.done:
            self.apply(self.submitter.on_task_done(self._now, task_id))
            return
        rec.held = held
        rec.push_ns = self._now
        self._send(held.worker_addr, self.push_message(rec, held.worker_id))

    # ---- replies --------------------------------------------------------------------------------------

    def _on_task_reply(self, _sender: str, msg: tm.TaskReply) -> None:
        rec = self.tasks.get(msg.task_id)
        if rec is None or rec.done:
            # A late answer of another attempt: nothing to take from it, but its worker may be free now.
            self.apply(self.submitter.on_task_done(self._now, msg.task_id, 0, msg.worker_id))
            self._discard_returns(msg)
            return
        if rec.kind == "task":
            self.apply(self.submitter.on_task_done(self._now, rec.task_id, msg.exec_ns, msg.worker_id))
        if msg.system_error is not None:
            if self._argument_lost(rec, msg.system_error):
                return
            self._finish_with_error(rec, msg.system_error)
            return
        try:
            results = results_from_wire(msg.returns)
        except RemoteProtocolError as exc:
            self._finish_with_error(rec, serialization.system_error_bytes(exc))
            return
        if len(results) != len(rec.return_ids):
            self._finish_with_error(rec, serialization.system_error_bytes(
                RemoteProtocolError(f"worker sent {len(results)} results for {len(rec.return_ids)} returns")))
            return
        # A user exception may be retried if the task asked for it.
        for result in results:
            if type(result) is ErrorResult and self._should_retry_exception(rec, result):
                rec.max_retries -= 1
                self._retry(rec)
                return
        for oid, result in zip(rec.return_ids, results):
            self._store_return(oid, result, msg.worker_id)
        if rec.kind == "actor_call":
            self.apply(self.actors.call_finished(rec))
        self._complete(rec, next((r.error for r in results if type(r) is ErrorResult), None))

    def _argument_lost(self, rec: TaskRecord, error: bytes) -> bool:
        """The worker could not read an argument: forget the copy it was told of, rebuild, and run again."""
        exc = serialization.error_from_bytes(error)
        if not isinstance(exc, ArgumentLostError):
            return False
        oid = exc.object_id
        v = self.objects.values.get(oid)
        if v is None:
            return False
        if v.state == ERROR:
            self._finish_with_error(rec, v.error)
            return True
        if v.state == STORED:
            rec.arg_losses += 1
            if rec.arg_losses > 5:
                return False
            # The worker tried every copy it was told of and could read none: they are gone (a dead
            # holder's death may not have reached us yet).
            v.locations = []
            if self.refs.is_owned(oid):
                self._object_lost(oid, "a worker could not read any copy")
            else:
                self._refetch(oid)
        # PENDING: being rebuilt (or re-asked of its owner); the task runs again once it is ready.
        if rec.kind == "task":
            self.submitter.forget_task(rec.task_id)
        rec.scheduled = False
        rec.held = None
        self._resolve_deps(rec)
        return True

    def _store_return(self, oid: str, result: Result, worker_id: str = "") -> None:
        refs = self.refs
        alive = oid in refs
        t = type(result)
        if t is InlineResult:
            contained = result.contained
            if alive:
                self.objects.resolve(oid, INLINE, data=result.blob, size=len(result.blob), contained=contained)
        elif t is StoredResult:
            contained = result.contained
            if alive:
                self.objects.resolve(oid, STORED, size=result.size,
                                     locations=[[result.holder_id, result.holder_addr, result.store_path]],
                                     contained=contained)
            else:
                self._send(result.holder_addr, om.FreeObjects([oid]))
        else:
            contained = []
            if alive:
                self.objects.resolve(oid, ERROR, error=result.error)
        if contained:
            self.apply(refs.adopt_contained(oid, [tuple(c) for c in contained], worker_id))
        self._on_resolved(oid)
        if alive:
            self._notify_remote_waiters(oid)

    def _discard_returns(self, msg: tm.TaskReply) -> None:
        """A late reply of an earlier attempt: free the copies it stored, unless one is the copy we use (both
        attempts ran on the same peer, where the store keys copies by object id). Refs inside its values
        reached us all the same, and their senders registered us as a borrower: take each in and let it go
        at once, so the registration is handed back instead of pinning those objects for good."""
        values = self.objects.values
        for i, entry in enumerate(msg.returns if type(msg.returns) is list else ()):
            try:
                result = result_from_wire(entry)
            except RemoteProtocolError:
                continue
            for inner_id, inner_owner in contained_of(result):
                self.apply(self.refs.on_received(inner_id, inner_owner, msg.worker_id))
                self.apply(self.refs.unpin(inner_id))
            if type(result) is not StoredResult:
                continue
            oid = f"{msg.task_id}.{i}"
            v = values.get(oid)
            if v is not None and v.state == STORED and any(loc[1] == result.holder_addr for loc in v.locations):
                continue
            self._send(result.holder_addr, om.FreeObjects([oid]))

    @staticmethod
    def _should_retry_exception(rec: TaskRecord, result: ErrorResult) -> bool:
        if rec.max_retries <= 0 or rec.cancelled or not rec.retry_exceptions:
            return False
        if rec.retry_exceptions is True:
            return True
        return any(name in result.exception_names for name in rec.retry_exceptions)

    def _complete(self, rec: TaskRecord, error: bytes | None = None) -> None:
        rec.done = True
        self.tasks.pop(rec.task_id, None)
        if self.report_finished:
            self._out.append(TaskFinished(rec.task_id, error))
        for oid in rec.return_ids:
            self.task_of_object.pop(oid, None)
        if rec.lineage_pinned:
            return  # a rebuild finished; the arguments stay pinned by lineage
        if rec.kind == "task" and not rec.cancelled:
            values = self.objects.values
            stored = [oid for oid in rec.return_ids
                      if (v := values.get(oid)) is not None and v.state == STORED and oid in self.refs]
            if stored:
                # Its results live on other peers' stores: keep what rebuilding them needs.
                rec.lineage_pinned = True
                rec.lineage_live = len(stored)
                for oid in stored:
                    self.lineage[oid] = rec
                return
        self._release_args(rec)

    def _release_args(self, rec: TaskRecord) -> None:
        refs = self.refs
        effects: list = []
        for oid, _ in rec.slot_refs:
            effects += refs.unpin(oid)
        for oid, _ in rec.nested_refs:
            effects += refs.unpin(oid)
        if rec.args_object is not None:
            effects += refs.unpin(rec.args_object[0])
        if rec.kind == "actor_call":
            effects += refs.unpin(rec.actor_id)
        if effects:
            self.apply(effects)

    def _finish_with_error(self, rec: TaskRecord, error: bytes) -> None:
        assert error is not None, "every failure carries its error"
        if rec.kind == "task" and rec.scheduled:
            self.submitter.forget_task(rec.task_id)
        for oid in rec.return_ids:
            self._store_return(oid, ErrorResult(error, []))
        if rec.kind == "actor_create":
            self.apply(self.actors.on_create_failed(rec, error))
        self._complete(rec, error)
        if rec.kind == "actor_call":
            self.apply(self.actors.call_finished(rec))

    def _lost_tasks(self, task_ids: list[str], why: str) -> None:
        for task_id in task_ids:
            rec = self.tasks.get(task_id)
            if rec is None or rec.done:
                continue
            if rec.cancelled:
                self._finish_with_error(rec, serialization.system_error_bytes(
                    TaskCancelledError(f"task {rec.name} ({task_id}) was cancelled")))
            elif rec.max_retries > 0:
                rec.max_retries -= 1
                self._retry(rec)
            else:
                self._finish_with_error(rec, serialization.system_error_bytes(WorkerCrashedError(
                    f"task {rec.name} ({task_id}) failed: {why}, and it has no retries left "
                    f"(max_retries={rec.options.get('max_retries', 0)})")))

    def _retry(self, rec: TaskRecord) -> None:
        self.submitter.forget_task(rec.task_id)
        for oid in rec.return_ids:
            self.objects.reset(oid)
        rec.held = None
        self.apply(self.submitter.submit(self._now, self._task_info(rec)))

    def _restart_actor(self, actor_id: str, old: TaskRecord) -> None:
        if not old.done and self.tasks.get(old.task_id) is old:
            # The worker died before the constructor answered: that attempt is over, and the new creation
            # task below takes its place (and its own hold on the arguments).
            old.done = True
            del self.tasks[old.task_id]
            self.submitter.forget_task(old.task_id)
            self._release_args(old)
        rec = TaskRecord(self.new_id(), "actor_create", old.name, old.code_id, old.code,
                         old.args, old.args_object, old.slot_refs, old.nested_refs, old.return_ids, old.shape,
                         old.options, 0, False, actor_id=old.actor_id)
        for oid in rec.return_ids:
            self.objects.reset(oid)
        self.apply(self.actors.restarted(actor_id, rec))

    # ---- cancellation ---------------------------------------------------------------------------------

    def cancel(self, object_id: str, force: bool, recursive: bool = True) -> None:
        task_id = self.task_of_object.get(object_id)
        rec = self.tasks.get(task_id) if task_id else None
        if rec is None or rec.done:
            return
        rec.cancelled = True
        error = serialization.system_error_bytes(TaskCancelledError(f"task {rec.name} ({rec.task_id}) was cancelled"))
        if not rec.scheduled:
            self._finish_with_error(rec, error)
            return
        if rec.kind == "task":
            removed, effects = self.submitter.cancel(self._now, rec.task_id)
            self.apply(effects)
            if removed:
                self._finish_with_error(rec, error)
                return
            if rec.held is not None:
                self._send(rec.held.worker_ctl_addr, tm.CancelTask(rec.task_id, force, recursive, self.addr))
                if force:
                    self._send(rec.held.peer_addr, tm.ForceKillWorker(rec.held.worker_id, "cancel(force=True)"))
        elif rec.kind == "actor_call":
            self.apply(self.actors.cancel_call(rec, force))

    # ---- deaths ---------------------------------------------------------------------------------------

    def _on_process_died(self, _sender: str, msg: tm.ProcessDied) -> None:
        """A process died — or a whole peer (`kind == "peer"`), and with it every process whose id starts
        with that peer's id."""
        now = self._now
        if msg.kind == "peer" and msg.proc_id == self.node_id and self.node_id:
            # Our own peer is gone (fenced, or leaving): nothing we own can be scheduled or rebuilt any more.
            # Everything waiting fails now, with its reason, and so does every later submission.
            self.peer_lost = f"this process's peer {self.node_id} is gone: {msg.reason}"
            error = serialization.system_error_bytes(PeerUnavailableError(self.peer_lost))
            for rec in list(self.tasks.values()):
                if not rec.done:
                    self._finish_with_error(rec, error)
            self.fail_everything(self.peer_lost)
        if msg.kind == "peer":
            prefix = msg.proc_id + "-"
            self.apply(self.refs.on_peer_died(msg.proc_id, now))
            effects = self.submitter.on_peer_died(now, msg.proc_id, msg.addr, f"its peer {msg.proc_id} died")
            is_dead = lambda proc: proc.startswith(prefix)  # noqa: E731
        else:
            self.apply(self.refs.on_process_died(msg.proc_id, now))
            effects = self.submitter.on_worker_died(now, msg.proc_id, f"its worker process died ({msg.reason})")
            is_dead = msg.proc_id.__eq__
        self.apply(effects)
        self.apply(self.actors.on_process_died(msg.reason, is_dead))
        # Objects owned by a dead process can never be produced now.
        for oid in self.refs.object_ids():
            owner = oid.split(".", 1)[0]
            if owner == self.proc_id or not is_dead(owner):
                continue
            v = self.objects.values.get(oid)
            if v is None or v.state == PENDING:
                self.objects.resolve(oid, ERROR, error=serialization.system_error_bytes(OwnerDiedError(
                    f"object {oid} was owned by process {owner}, which died ({msg.reason}); an object lives "
                    f"only as long as the process that created it, so nothing can rebuild it")))
                self._on_resolved(oid)
        if msg.kind == "peer":
            self._lose_copies_on(msg.proc_id)
        for addr in (msg.addr, msg.task_addr):
            if addr:
                self._out.append(ForgetAddress(addr))

    # ---- messages -------------------------------------------------------------------------------------

    def _on_lease_message(self, sender: str, msg) -> None:
        self.apply(self.submitter.on_message(self._now, sender, msg))

    def _on_lease_revoked(self, _sender: str, msg: lm.LeaseRevoked) -> None:
        handled, effects = self.actors.on_lease_revoked(msg.lease_id, msg.reason)
        self.apply(effects)
        if handled:
            return
        self.apply(self.submitter.on_revoked(self._now, msg.lease_id, f"its worker died ({msg.reason})"))

    def _on_tasks_bounced(self, sender: str, msg: tm.TasksBounced) -> None:
        self.apply(self.submitter.bounce(self._now, [tid for tid in msg.task_ids if isinstance(tid, str)],
                                         from_worker=sender))

    def _on_cluster_info(self, _sender: str, msg: tm.ClusterInfo) -> None:
        if msg.alive_peers > 0:
            self.submitter.peers_that_fit = msg.alive_peers

    def _on_actor_message(self, sender: str, msg) -> None:
        self.apply(self.actors.on_message(self._now, sender, msg))

    _handlers = {
        tm.TaskReply: _on_task_reply,
        lm.LeaseGranted: _on_lease_message,
        lm.LeaseSpillback: _on_lease_message,
        lm.LeaseRejected: _on_lease_message,
        lm.LeaseWanted: _on_lease_message,
        lm.LeaseRevoked: _on_lease_revoked,
        om.GetObject: ObjectOwner._on_get_object,
        om.ObjectStatus: ObjectOwner._on_object_status,
        om.AddLocation: ObjectOwner._on_add_location,
        om.AddBorrower: lambda self, _s, msg: self.apply(self.refs.on_add_borrower(msg)),
        om.BorrowerAdded: lambda self, _s, msg: self.apply(self.refs.on_borrower_added(msg)),
        om.RemoveBorrower: lambda self, sender, msg: self.apply(self.refs.on_remove_borrower(sender, msg)),
        om.BorrowConfirmed: lambda self, sender, msg: self.apply(self.refs.on_borrow_confirmed(sender, msg)),
        tm.TasksBounced: _on_tasks_bounced,
        tm.ProcessDied: _on_process_died,
        tm.ClusterInfo: _on_cluster_info,
        tm.ActorLocation: _on_actor_message,
        tm.ResolveActor: _on_actor_message,
        tm.KillActor: _on_actor_message,
    }

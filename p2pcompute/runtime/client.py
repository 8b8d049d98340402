"""The client runtime: what every driver and worker runs to submit work and own objects.

One I/O thread owns the sockets and the protocol cores (reference table, submitter); user threads never
touch them. User threads serialize their own arguments and values, then hand small operations to the I/O
thread through one ordered queue (`ops`) — including every ref created and dropped — so the I/O thread sees
them in program order: a ref passed to a task is always counted before the user's `del` of it.

Flow of a task: `submit` (user thread) -> `_schedule` once its ref arguments are ready -> submitter core
asks for a lease -> `Push` effect -> `PushTask` straight to the leased worker -> `TaskReply` -> values are
resolved, waiters woken, the lease reused or returned.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future

from p2pcompute import serialization
from p2pcompute.errors import (ActorDiedError, ArgumentLostError, ObjectFreedError, ObjectLostError, OwnerDiedError,
                               PeerUnavailableError, RemoteProtocolError, TableError, TaskCancelledError,
                               WorkerCrashedError)
from p2pcompute.lease import messages as lm
from p2pcompute.lease.submitter import ActorPlaced, Held, Push, Steal, SubmitterConfig, SubmitterCore, TaskInfo
from p2pcompute.net import codec
from p2pcompute.net.effects import Send, Timer
from p2pcompute.net.transport import Transport, Waker
from p2pcompute.object_ref import _OP_DEC, _OP_INC, ObjectRef
from p2pcompute.ownership import messages as om
from p2pcompute.ownership.refcount import Free, ReferenceTable
from p2pcompute.ownership.store import LocalStore
from p2pcompute.runtime import messages as rm
from p2pcompute.ownership.task_record import TaskRecord  # noqa: F401 - re-exported for the API modules
from p2pcompute.runtime.actors import ActorManager
from p2pcompute.runtime.output import OutputBuffer
from p2pcompute.runtime.objects import (ERROR, INLINE, PENDING, STORED, ObjectTable, deadline_of, load_value,
                                        timeout_error)

log = logging.getLogger("p2pcompute.client")

INLINE_MAX_BYTES = 100 * 1024
# Benchmarks and tests of the transfer path: never map another peer's store on this machine, pull a copy
# as if it were on another machine.
_FORCE_TRANSFERS = os.environ.get("P2P_FORCE_TRANSFERS") == "1"
_TICK_NS = 100_000_000


def now_ns() -> int:
    return time.monotonic_ns()


class ClientRuntime:
    def __init__(self, ctx, *, proc_id: str, kind: str, job_id: str, job_env: dict, peer_addr: str,
                 sock_dir: str, tcp_host: str | None = None, advertise_host: str | None = None,
                 worker_id: str | None = None, register_timeout_s: float = 30.0,
                 submitter_config: SubmitterConfig | None = None):
        self.proc_id = proc_id
        self.kind = kind
        self.job_id = job_id
        self.job_env = job_env
        self.peer_addr = peer_addr
        self.worker_id = worker_id
        self.transport = Transport(ctx, proc_id, "c", ipc_path=os.path.join(sock_dir, f"{proc_id}c"),
                                   tcp_host=tcp_host, advertise_host=advertise_host)
        self.addr = self.transport.address
        self.ops: deque = deque()
        self.waker = Waker()
        self.transport.add_fd(self.waker.fd)
        self.refs = ReferenceTable(proc_id, self.addr)
        self.objects = ObjectTable()
        self.submitter = SubmitterCore(proc_id, self.addr, job_id, peer_addr, config=submitter_config)
        self.tasks: dict[str, TaskRecord] = {}
        self.task_of_object: dict[str, str] = {}
        self.dep_waiters: dict[str, list[TaskRecord]] = {}
        # object id -> the task that made it, for stored results that can be rebuilt if their copies are lost
        self.lineage: dict[str, TaskRecord] = {}
        self._stores: dict[str, LocalStore] = {}
        self.sent_code: set = set()
        self.sent_env: set = set()
        self._counter = itertools.count(1)
        self._deadline_ns = 0
        self._timers: list = []
        self._rpcs: dict[str, Future] = {}
        self._running = False
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.peer_info: dict = {}
        self.store: LocalStore | None = None
        self.actors = ActorManager(self)
        self.handlers: dict = {}  # extra message handlers, for special processes (the keeper)
        # Workers queue their user code's output here (see runtime.output); drivers print what arrives.
        self.output = OutputBuffer()
        if kind == "driver":
            self.job_env = dict(job_env, driver_addr=self.addr)
        self._register(register_timeout_s)

    # ---- start and stop -----------------------------------------------------------------------------

    def _register(self, timeout_s: float) -> None:
        msg = rm.RegisterClient(self.proc_id, self.kind, self.addr, os.getpid(), self.job_id, self.job_env)
        self.transport.send(self.peer_addr, codec.encode(msg))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            frames, _, events = self.transport.poll(100)
            for ev in events:
                raise PeerUnavailableError(f"cannot reach the local peer at {self.peer_addr}: {ev.reason}")
            for sender, data in frames:
                try:
                    reply = codec.decode(data)
                except RemoteProtocolError:
                    continue
                if isinstance(reply, rm.ClientRegistered):
                    self.peer_info = {"peer_id": reply.peer_id, "peer_addr": reply.peer_addr,
                                      "store_dir": reply.store_dir, "total": reply.total, **reply.config}
                    self.store = LocalStore(reply.store_dir)
                    self.node_id = reply.peer_id
                    alive = reply.config.get("alive_peers", 1)
                    self.submitter.peers_that_fit = alive if isinstance(alive, int) and alive > 0 else 1
                    return
        raise PeerUnavailableError(f"the local peer at {self.peer_addr} did not answer within {timeout_s} s")

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"p2p-io-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self._running:
            return
        done = threading.Event()

        def leave():
            self._run(self.submitter.release_all())
            self._run(self.actors.release_all())
            self._free_all_stored()
            self._send(self.peer_addr, rm.Unregister(self.proc_id))
            self._running = False
            done.set()

        self.call_soon(leave)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self.transport.close()
        self.waker.close()

    # ---- hand-offs from user threads ----------------------------------------------------------------

    def call_soon(self, fn) -> None:
        self.ops.append(fn)
        self.waker.wake()

    def call(self, fn, timeout_s: float | None = None):
        """Run `fn` on the I/O thread and wait for its result (for rare operations)."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future = Future()

        def run():
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                fut.set_exception(exc)

        self.call_soon(run)
        return fut.result(timeout_s)

    def new_id(self) -> str:
        return f"{self.proc_id}.{next(self._counter):x}"

    # ---- the loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while self._running:
                timeout_ms = self._poll_timeout_ms()
                frames, fds, events = self.transport.poll(timeout_ms)
                if fds:
                    self.waker.clear()
                # What this pass sends goes out when it ends, one frame per destination (Transport.hold).
                self.transport.hold()
                self._drain_ops()
                if self.output.has_other():
                    self._send_output()
                for sender, data in frames:
                    self._on_frame(sender, data)
                if events:
                    for ev in events:
                        self._on_unreachable(ev)
                now = now_ns()
                if now >= self._deadline_ns:
                    self._tick(now)
                self.transport.flush()
        except BaseException:  # noqa: BLE001 - the I/O thread must report, never vanish silently
            log.exception("p2pcompute I/O thread crashed")
            self._fail_everything("the p2pcompute I/O thread crashed; see the log above")
        finally:
            self._stopped.set()

    def _poll_timeout_ms(self) -> float:
        if self.ops:
            return 0
        delta = (self._deadline_ns - now_ns()) / 1e6
        return max(0.0, min(delta, 100.0))

    def _drain_ops(self) -> None:
        ops = self.ops
        refs = self.refs
        while ops:
            op = ops.popleft()
            if type(op) is tuple:
                code = op[0]
                if code == _OP_INC:
                    refs.add_local(op[1], op[2])
                elif code == _OP_DEC:
                    effects = refs.remove_local(op[1])
                    if effects:
                        self._run(effects)
                else:
                    self._run_op(op)
            else:
                try:
                    op()
                except Exception:
                    log.exception("internal operation failed")

    def _run_op(self, op: tuple) -> None:
        code = op[0]
        if code == "submit":
            self._submit(op[1])
        elif code == "sent":  # a ref left this process in a message sent by another thread
            self._run(self.refs.on_sent(op[1], op[2], op[3]))
        elif code == "received":
            self.refs.on_received(op[1], op[2])
        elif code == "unpin":
            self._run(self.refs.unpin(op[1]))
        elif code == "fetch":
            self._fetch(op[1])
        elif code == "output":
            self._send_output()
        elif code == "send":
            self._send(op[1], op[2])

    def _tick(self, now: int) -> None:
        self._deadline_ns = now + _TICK_NS
        effects = self.submitter.on_tick(now)
        while self._timers and self._timers[0][0] <= now:
            heapq.heappop(self._timers)
        if effects:
            self._run(effects)
        self.actors.on_tick(now)

    # ---- effects ------------------------------------------------------------------------------------

    def _run(self, effects: list) -> None:
        for eff in effects:
            t = type(eff)
            if t is Send:
                self._send(eff.to, eff.msg)
            elif t is Push:
                self._push(eff.task_id, eff.lease)
            elif t is Timer:
                if eff.at_ns < self._deadline_ns:
                    self._deadline_ns = eff.at_ns
            elif t is Free:
                self._on_free(eff.object_id)
            elif t is ActorPlaced:
                self.actors.on_placed(eff.task_id, eff.lease)
            elif t is Steal:
                self._send(eff.lease.worker_ctl_addr, rm.StealTasks(list(eff.task_ids), self.addr))

    def _send(self, to: str, msg) -> None:
        try:
            self.transport.send(to, codec.encode(msg))
        except ValueError as exc:
            log.warning("cannot send %s to %s: %s", type(msg).__name__, to, exc)

    # ---- incoming -----------------------------------------------------------------------------------

    def _on_frame(self, sender: str, data) -> None:
        try:
            msg = codec.decode(data)
        except RemoteProtocolError as exc:
            log.warning("dropped a frame from %s: %s", sender, exc)
            return
        try:
            self._dispatch(sender, msg)
        except Exception:
            log.exception("error handling %s from %s", type(msg).__name__, sender)

    def _dispatch(self, sender: str, msg) -> None:
        t = type(msg)
        if t is rm.TaskReply:
            self._on_task_reply(msg)
        elif t in (lm.LeaseGranted, lm.LeaseSpillback, lm.LeaseRejected, lm.LeaseWanted):
            effects = self.submitter.on_message(now_ns(), msg)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s -> %s", msg, effects)
            self._run(effects)
        elif t is lm.LeaseRevoked:
            if self.actors.on_lease_revoked(msg.lease_id, msg.reason):
                return
            lost, effects = self.submitter.on_revoked(now_ns(), msg.lease_id)
            self._run(effects)
            self._lost_tasks(lost, f"its worker died ({msg.reason})")
        elif t is om.GetObject:
            self._on_get_object(sender, msg)
        elif t is om.ObjectStatus:
            self._on_object_status(msg)
        elif t is om.AddLocation:
            self._on_add_location(msg)
        elif t is om.AddBorrower:
            self._run(self.refs.on_add_borrower(msg))
        elif t is om.BorrowerAdded:
            self._run(self.refs.on_borrower_added(msg))
        elif t is om.RemoveBorrower:
            self._run(self.refs.on_remove_borrower(sender, msg))
        elif t is rm.TasksBounced:
            self._run(self.submitter.bounce(now_ns(), [tid for tid in msg.task_ids if isinstance(tid, str)]))
        elif t is rm.LogLines:
            self._on_log(msg)
        elif t is rm.ProcessDied:
            self._on_process_died(msg)
        elif t is rm.NodesReply or t is rm.PeerStatusReply or t is rm.TableOpReply:
            fut = self._rpcs.pop(msg.request_id, None)
            if fut is not None:
                fut.set_result(msg)
        elif t is rm.ClusterInfo:
            if msg.alive_peers > 0:
                self.submitter.peers_that_fit = msg.alive_peers
        elif t is rm.Warning_:
            sys.stderr.write(f"p2pcompute: {msg.text}\n")
            sys.stderr.flush()
        elif t is rm.CancelTask:
            self._on_cancel_request(msg)
        elif t is rm.RefsRequest:
            self._send(msg.reply_to, rm.RefsReply(msg.request_id, self.proc_id, self._refs_report()))
        elif t is rm.MemoryReply:
            fut = self._rpcs.pop(msg.request_id, None)
            if fut is not None:
                fut.set_result(msg)
        elif t in self.handlers:
            self.handlers[t](msg)
        elif t is rm.KeeperAddress or t is rm.DetachedCreated or t is om.ObjectFetched:
            fut = self._rpcs.pop(msg.request_id, None)
            if fut is not None:
                fut.set_result(msg)
        else:
            self.actors.dispatch(sender, msg)

    def _on_unreachable(self, ev) -> None:
        if ev.address == self.peer_addr:
            log.error("lost the local peer at %s: %s", ev.address, ev.reason)
        else:
            # Deaths of processes are reported by peers (ProcessDied); this is only a hint.
            log.info("process at %s unreachable: %s", ev.address, ev.reason)

    # ---- submitting ---------------------------------------------------------------------------------

    def submit(self, rec: TaskRecord) -> None:
        """User thread: hand a task to the I/O thread."""
        self.ops.append(("submit", rec))
        self.waker.wake()

    def _submit(self, rec: TaskRecord) -> None:
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
            refs.pin(rec.actor_id, self.actors.owner_of(rec.actor_id))
            self.actors.submit_call(rec)  # its place in the caller's order is taken now, not when args resolve
        self._resolve_deps(rec)

    def _resolve_deps(self, rec: TaskRecord) -> None:
        waiting = 0
        values = self.objects.values
        fetch = []
        for oid, owner in rec.slot_refs:
            v = values.get(oid)
            if v is None or v.state == PENDING:
                waiting += 1
                self.dep_waiters.setdefault(oid, []).append(rec)
                if not self.refs.is_owned(oid):
                    fetch.append(oid)
        rec.deps_left = waiting
        if fetch:
            self._fetch(fetch)
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
        for oid, _owner in rec.slot_refs:
            v = values.get(oid)
            if v is None or v.state == PENDING:
                # Ready when counted, but reset since (its copies were lost and it is being rebuilt).
                waiting.append(oid)
            elif v.state == INLINE:
                slots.append(["inline", v.data])
            elif v.state == STORED:
                slots.append(["stored", oid, v.size, [list(l) for l in v.locations], _owner])
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
            self._fetch([oid for oid in waiting if not self.refs.is_owned(oid)])
            return
        if rec.args_object is not None:
            entry = locality.get(self.node_id)
            locality[self.node_id] = [(entry[0] if entry else 0) + rec.args_object[1], self.peer_addr]
        rec.slots = slots
        rec.locality = locality
        rec.scheduled = True
        if rec.kind == "actor_call":
            self.actors.call_ready(rec)
            return
        self._run(self.submitter.submit(now_ns(), self._task_info(rec)))

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
        key = (tuple(sorted(rec.shape.items())), rec.code_id, strategy, affinity,
               first_target, rec.kind == "actor_create" and rec.task_id)
        return TaskInfo(rec.task_id, key, rec.shape, strategy, affinity, bool(soft) if soft is not None else True,
                        locality, first_target, actor=rec.kind == "actor_create")

    def push_message(self, rec: TaskRecord, worker_id: str, seq: int = 0) -> rm.PushTask:
        code = None
        if (worker_id, rec.code_id) not in self.sent_code:
            self.sent_code.add((worker_id, rec.code_id))
            code = rec.code
        env = None
        if worker_id not in self.sent_env:
            self.sent_env.add(worker_id)
            env = self.job_env
        for oid, owner in rec.nested_refs:
            self._run(self.refs.on_sent(oid, owner, worker_id))
        return rm.PushTask(rec.task_id, rec.kind, rec.name, self.job_id, rec.code_id, code, env, rec.args,
                           rec.args_object, rec.slots or [], [list(r) for r in rec.nested_refs],
                           rec.return_ids, self.addr, rec.actor_id, rec.method, seq, rec.options.get("wire", {}))

    def _push(self, task_id: str, held: Held) -> None:
        rec = self.tasks.get(task_id)
        if rec is None or rec.done:
            self._run(self.submitter.on_task_done(now_ns(), task_id))
            return
        rec.held = held
        rec.push_ns = now_ns()
        msg = self.push_message(rec, held.worker_id)
        self._send(held.worker_addr, msg)

    # ---- replies ------------------------------------------------------------------------------------

    def _on_task_reply(self, msg: rm.TaskReply) -> None:
        rec = self.tasks.get(msg.task_id)
        if rec is None or rec.done:
            # A late answer of another attempt: nothing to take from it, but its worker may be free now.
            self._run(self.submitter.on_task_done(now_ns(), msg.task_id, 0, msg.worker_id))
            self._discard_returns(msg)
            return
        if rec.kind == "task":
            self._run(self.submitter.on_task_done(now_ns(), rec.task_id, msg.exec_ns, msg.worker_id))
        if msg.system_error is not None:
            if self._argument_lost(rec, msg.system_error):
                return
            self._finish_with_error(rec, msg.system_error)
            return
        if len(msg.returns) != len(rec.return_ids):
            self._finish_with_error(rec, serialization.system_error_bytes(
                RemoteProtocolError(f"worker sent {len(msg.returns)} results for {len(rec.return_ids)} returns")))
            return
        # A user exception may be retried if the task asked for it.
        for entry in msg.returns:
            if entry[0] == "error" and self._should_retry_exception(rec, entry):
                rec.max_retries -= 1
                self._retry(rec)
                return
        for oid, entry in zip(rec.return_ids, msg.returns):
            self._store_return(oid, entry, msg.node_id)
        if rec.kind == "actor_create":
            self.actors.on_created(rec, msg)
        elif rec.kind == "actor_call":
            self.actors.on_call_done(rec)
        self._complete(rec)

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

    def _copy_readable(self, oid: str, loc: list) -> bool:
        """Whether a copy still exists, as far as this process can tell (only local stores are checked)."""
        path = loc[2]
        if os.path.isdir(path):
            return self._store_at(path).exists(oid)
        return True

    def _store_at(self, path: str) -> LocalStore:
        store = self._stores.get(path)
        if store is None:
            store = self._stores[path] = LocalStore(path)
        return store

    def _store_return(self, oid: str, entry: list, node_id: str) -> None:
        kind = entry[0]
        refs = self.refs
        alive = oid in refs
        if kind == "inline":
            _, blob, contained = entry
            if alive:
                self.objects.resolve(oid, INLINE, data=blob, size=len(blob), contained=contained)
        elif kind == "stored":
            _, size, contained, store_path, holder_id, holder_addr = entry
            if alive:
                self.objects.resolve(oid, STORED, size=size, locations=[[holder_id, holder_addr, store_path]],
                                     contained=contained)
            else:
                self._send(holder_addr, om.FreeObjects([oid]))
        else:
            contained = []
            if alive:
                self.objects.resolve(oid, ERROR, error=entry[1])
        if contained:
            self._run(refs.adopt_contained(oid, [tuple(c) for c in contained]))
        self._on_resolved(oid)
        if alive:
            self._notify_remote_waiters(oid)

    def _discard_returns(self, msg: rm.TaskReply) -> None:
        for entry in msg.returns:
            if entry and entry[0] == "stored":
                self._send(entry[5], om.FreeObjects([]))

    def _should_retry_exception(self, rec: TaskRecord, entry: list) -> bool:
        if rec.max_retries <= 0 or rec.cancelled or not rec.retry_exceptions:
            return False
        if rec.retry_exceptions is True:
            return True
        names = entry[2] if len(entry) > 2 else []
        return any(name in names for name in rec.retry_exceptions)

    def _complete(self, rec: TaskRecord) -> None:
        rec.done = True
        self.tasks.pop(rec.task_id, None)
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
            self._run(effects)

    def _finish_with_error(self, rec: TaskRecord, error: bytes) -> None:
        assert error is not None, "every failure carries its error"
        if rec.kind == "task" and rec.scheduled:
            self.submitter.forget_task(rec.task_id)
        for oid in rec.return_ids:
            self._store_return(oid, ["error", error], "")
        if rec.kind == "actor_create":
            self.actors.on_create_failed(rec, error)
        self._complete(rec)
        if rec.kind == "actor_call":
            self.actors.call_finished(rec)

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
        self._run(self.submitter.submit(now_ns(), self._task_info(rec)))

    # ---- objects ------------------------------------------------------------------------------------

    def put_local(self, object_id: str, ser: serialization.Serialized) -> None:
        """User thread: make a new owned object ready (inline, or written to the local store)."""
        size = ser.nbytes
        if size <= INLINE_MAX_BYTES:
            self.objects.resolve(object_id, INLINE, data=ser.to_blob(), size=size, contained=ser.refs)
            stored = False
        else:
            self.store.write(object_id, ser)
            self.objects.resolve(object_id, STORED, size=size,
                                 locations=[[self.node_id, self.peer_addr, self.store.path]], contained=ser.refs)
            stored = True
        refs = list(ser.refs)

        def register():
            if refs:
                self._run(self.refs.set_contains(object_id, refs))
            if stored:
                self._send(self.peer_addr, om.ObjectSealed(object_id, size, self.addr))
            self._on_resolved(object_id)
            self._notify_remote_waiters(object_id)

        self.call_soon(register)

    def read_stored(self, object_id: str, v) -> memoryview:
        return self.read_object(object_id, v.size, v.locations, self.addr if self.refs.is_owned(object_id)
                                else self._owner_addr(object_id))

    def _owner_addr(self, object_id: str) -> str:
        entry = self.refs._entries.get(object_id)
        return entry.owner_addr if entry is not None else ""

    def read_object(self, object_id: str, size: int, locations: list, owner_addr: str) -> memoryview:
        """Map a stored object: from a store on this machine if any holds it, else pull a copy into ours
        (through our peer, which shares one transfer among all local readers). Any thread but the I/O one."""
        for _peer_id, _peer_addr, path in locations:
            if path == self.store.path or (os.path.isdir(path) and not _FORCE_TRANSFERS):
                try:
                    return self._store_at(path).read(object_id)
                except ObjectLostError:
                    continue
        if self.store.exists(object_id):
            return self.store.read(object_id)
        errors = []
        for peer_id, peer_addr, _path in locations:
            if peer_id == self.node_id:
                continue
            reply = self.peer_request(lambda rid: om.FetchObject(rid, object_id, size, peer_addr, owner_addr,
                                                                 self.addr), timeout_s=max(60.0, size / 50e6))
            if reply.error is None:
                return self.store.read(object_id)
            errors.append(reply.error)
        raise ObjectLostError(f"object {object_id}: no copy could be read ({'; '.join(errors) or 'none left'})")

    def _fetch(self, object_ids: list[str]) -> None:
        """Ask owners about borrowed objects we need and know nothing of yet."""
        values = self.objects.values
        for oid in object_ids:
            if self.refs.is_owned(oid):
                if oid not in values and oid not in self.refs:
                    self.objects.resolve(oid, ERROR, error=serialization.system_error_bytes(
                        ObjectFreedError(f"object {oid} was already freed")))
                continue
            v = values.get(oid) or self.objects.value(oid)
            if v.requested or v.state != PENDING:
                continue
            counts = self.refs.counts(oid)
            if counts is None:
                continue
            v.requested = True
            owner = self.refs._entries[oid].owner_addr
            self._send(owner, om.GetObject(oid, self.addr))

    def _on_get_object(self, sender: str, msg: om.GetObject) -> None:
        oid = msg.object_id
        if oid not in self.refs or not self.refs.is_owned(oid):
            state = "freed" if self.refs.is_owned(oid) else "lost"
            self._send(msg.reply_to, om.ObjectStatus(oid, state, None, [], [], None))
            return
        v = self.objects.values.get(oid)
        if v is None:
            with self.objects.lock:
                v = self.objects.value(oid)  # still being computed: the reply goes out when it is ready
        if v.state == PENDING:
            if v.remote_waiters is None:
                v.remote_waiters = []
            v.remote_waiters.append((sender, msg.reply_to))
            return
        self._reply_status(sender, msg.reply_to, oid, v)

    def _reply_status(self, sender: str, reply_to: str, oid: str, v) -> None:
        for inner_id, inner_owner in v.contained:
            self._run(self.refs.on_sent(inner_id, inner_owner, sender))
        if v.state == INLINE:
            status = om.ObjectStatus(oid, "inline", v.data, [], [list(c) for c in v.contained], None)
        elif v.state == STORED:
            status = om.ObjectStatus(oid, "stored", None, [list(l) + [v.size] for l in v.locations],
                                     [list(c) for c in v.contained], None)
        else:
            status = om.ObjectStatus(oid, "error", None, [], [], v.error)
        self._send(reply_to, status)

    def _notify_remote_waiters(self, oid: str) -> None:
        v = self.objects.values.get(oid)
        if v is None or not v.remote_waiters:
            return
        waiters, v.remote_waiters = v.remote_waiters, None
        for sender, reply_to in waiters:
            self._reply_status(sender, reply_to, oid, v)

    def _on_object_status(self, msg: om.ObjectStatus) -> None:
        oid = msg.object_id
        contained = [tuple(c) for c in msg.contained if isinstance(c, list) and len(c) == 2]
        if msg.state == "inline" and msg.data is not None:
            self.objects.resolve(oid, INLINE, data=msg.data, size=len(msg.data), contained=contained)
        elif msg.state == "stored" and msg.locations:
            locs = [[l[0], l[1], l[2]] for l in msg.locations]
            size = msg.locations[0][3] if len(msg.locations[0]) > 3 else 0
            self.objects.resolve(oid, STORED, size=size, locations=locs, contained=contained)
        elif msg.state == "error" and msg.error is not None:
            self.objects.resolve(oid, ERROR, error=msg.error)
        else:
            error = (ObjectFreedError(f"object {oid} was freed by its owner") if msg.state == "freed" else
                     OwnerDiedError(f"object {oid}: its owner no longer has it (the owner restarted or died), "
                                    f"so it cannot be read or rebuilt"))
            self.objects.resolve(oid, ERROR, error=serialization.system_error_bytes(error))
        if contained:
            self._run(self.refs.adopt_contained(oid, contained))
        self._on_resolved(oid)

    def _free_all_stored(self) -> None:
        """Leaving: every stored object this process owns dies with it, so free the copies now rather than
        leave them to the peers' cleanup."""
        by_holder: dict[str, list[str]] = {}
        for oid, v in list(self.objects.values.items()):
            if v.state == STORED and self.refs.is_owned(oid):
                for _peer_id, peer_addr, _path in v.locations:
                    by_holder.setdefault(peer_addr, []).append(oid)
        for addr, oids in by_holder.items():
            self._send(addr, om.FreeObjects(oids))

    def _on_add_location(self, msg: om.AddLocation) -> None:
        v = self.objects.values.get(msg.object_id)
        if v is None or msg.object_id not in self.refs or v.state != STORED:
            self._send(msg.peer_addr, om.FreeObjects([msg.object_id]))  # already gone: drop the copy too
            return
        loc = [msg.peer_id, msg.peer_addr, msg.store_path]
        if loc not in v.locations:
            v.locations.append(loc)

    def _on_free(self, object_id: str) -> None:
        v = self.objects.drop(object_id)
        rec = self.lineage.pop(object_id, None)
        if rec is not None:
            rec.lineage_live -= 1
            if rec.lineage_live <= 0 and rec.task_id not in self.tasks:
                rec.lineage_pinned = False
                self._release_args(rec)
        if v is None or not self.refs.is_owned(object_id):
            return
        if v.state == STORED:
            for peer_id, peer_addr, _path in v.locations:
                self._send(peer_addr, om.FreeObjects([object_id]))
        if v.remote_waiters:
            for _sender, reply_to in v.remote_waiters:
                self._send(reply_to, om.ObjectStatus(object_id, "freed", None, [], [], None))
        self.actors.on_handle_freed(object_id)

    # ---- cancellation -------------------------------------------------------------------------------

    def cancel(self, object_id: str, force: bool, recursive: bool = True) -> None:
        def run():
            task_id = self.task_of_object.get(object_id)
            rec = self.tasks.get(task_id) if task_id else None
            if rec is None or rec.done:
                return
            rec.cancelled = True
            error = serialization.system_error_bytes(
                TaskCancelledError(f"task {rec.name} ({rec.task_id}) was cancelled"))
            if not rec.scheduled:
                self._finish_with_error(rec, error)
                return
            if rec.kind == "task":
                removed, effects = self.submitter.cancel(now_ns(), rec.task_id)
                self._run(effects)
                if removed:
                    self._finish_with_error(rec, error)
                    return
                if rec.held is not None:
                    self._send(rec.held.worker_ctl_addr, rm.CancelTask(rec.task_id, force, recursive, self.addr))
                    if force:
                        self._send(rec.held.peer_addr, rm.ForceKillWorker(rec.held.worker_id, "cancel(force=True)"))
            elif rec.kind == "actor_call":
                self.actors.cancel_call(rec, force)

        self.call_soon(run)

    def _on_cancel_request(self, msg: rm.CancelTask) -> None:
        pass  # only workers execute tasks; see runtime.worker

    # ---- deaths -------------------------------------------------------------------------------------

    def _on_process_died(self, msg: rm.ProcessDied) -> None:
        """A process died — or a whole peer (`kind == "peer"`), and with it every process whose id starts
        with that peer's id."""
        now = now_ns()
        if msg.kind == "peer":
            prefix = msg.proc_id + "-"
            self._run(self.refs.on_peer_died(msg.proc_id))
            lost, effects = self.submitter.on_peer_died(now, msg.proc_id, msg.addr)
            why = f"its peer {msg.proc_id} died"
            is_dead = lambda proc: proc.startswith(prefix)  # noqa: E731
        else:
            self._run(self.refs.on_process_died(msg.proc_id))
            lost, effects = self.submitter.on_worker_died(now, msg.proc_id)
            why = f"its worker process died ({msg.reason})"
            is_dead = msg.proc_id.__eq__
        self._run(effects)
        self._lost_tasks(lost, why)
        self.actors.on_process_died(msg, is_dead)
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
                self.transport.forget(addr)

    def _lose_copies_on(self, peer_id: str) -> None:
        """Drop locations on a dead peer. An owned object with no copy left is rebuilt from its lineage; a
        borrowed one is asked of its owner again (which rebuilds it)."""
        for oid, v in list(self.objects.values.items()):
            if v.state != STORED or not v.locations:
                continue
            left = [loc for loc in v.locations if loc[0] != peer_id]
            if len(left) == len(v.locations):
                continue
            v.locations = left
            if left:
                continue
            if self.refs.is_owned(oid):
                self._object_lost(oid, f"its only copy was on peer {peer_id}, which died")
            else:
                self._refetch(oid)

    def _refetch(self, oid: str) -> None:
        self.objects.reset(oid)
        v = self.objects.values.get(oid)
        if v is not None:
            v.requested = False
        self._fetch([oid])

    def _object_lost(self, oid: str, why: str) -> None:
        """An owned object lost every copy: run the task that made it again, or fail it clearly."""
        v = self.objects.values.get(oid)
        if v is None or oid not in self.refs:
            return
        rec = self.lineage.get(oid)
        if rec is None:
            made_by_put = oid not in self.task_of_object
            self.objects.resolve(oid, ERROR, error=serialization.system_error_bytes(ObjectLostError(
                f"object {oid} is lost: {why}. " + ("It was made by put(), which keeps no lineage, so it cannot "
                                                     "be rebuilt; keep important values alive on several peers "
                                                     "or recompute them in a task" if made_by_put else
                                                     "It cannot be rebuilt."))))
            self._on_resolved(oid)
            return
        if rec.task_id in self.tasks:
            self.objects.reset(oid)
            return  # already being rebuilt
        limit = rec.options.get("max_retries", 3)
        if 0 <= limit <= rec.rebuilds:
            self.objects.resolve(oid, ERROR, error=serialization.system_error_bytes(ObjectLostError(
                f"object {oid} is lost ({why}) and was already rebuilt {rec.rebuilds} time(s), the task's "
                f"max_retries")))
            self._on_resolved(oid)
            return
        rec.rebuilds += 1
        log.info("rebuilding %s by re-running %s (%s)", oid, rec.name, why)
        for rid in rec.return_ids:
            rv = self.objects.values.get(rid)
            if rv is not None and rv.state == STORED and not rv.locations:
                self.objects.reset(rid)
        rec.done = rec.scheduled = False
        rec.held = None
        self.tasks[rec.task_id] = rec
        for rid in rec.return_ids:
            self.task_of_object[rid] = rec.task_id
        # Its own arguments may be lost too: rebuild them first (recursively).
        for dep, _owner in rec.slot_refs:
            dv = self.objects.values.get(dep)
            if dv is not None and dv.state == STORED and not dv.locations and self.refs.is_owned(dep):
                self._object_lost(dep, why)
        self._resolve_deps(rec)

    def _fail_everything(self, why: str) -> None:
        error = serialization.system_error_bytes(PeerUnavailableError(why))
        for oid, v in list(self.objects.values.items()):
            if v.state == PENDING:
                self.objects.resolve(oid, ERROR, error=error)

    # ---- logs ---------------------------------------------------------------------------------------

    def _send_output(self) -> None:
        driver = self.output.driver_addr
        if driver is None:
            return
        for stream, lines in self.output.take(task_thread=False):
            self._send(driver, rm.LogLines(stream, lines))

    def _on_log(self, msg: rm.LogLines) -> None:
        stream = sys.stderr if msg.stream == "stderr" else sys.stdout
        try:
            stream.write("".join(line if line.endswith("\n") else line + "\n" for line in msg.lines
                                 if isinstance(line, str)))
            stream.flush()
        except Exception:
            pass

    # ---- requests to the peer -----------------------------------------------------------------------

    def peer_request(self, make, timeout_s: float = 10.0, to: str | None = None):
        request_id = self.new_id()
        fut: Future = Future()

        def send():
            self._rpcs[request_id] = fut
            self._send(to or self.peer_addr, make(request_id))

        self.call_soon(send)
        return fut.result(timeout_s)

    def table(self, op: tuple, *, linearizable: bool = False, timeout_s: float = 30.0):
        """Run an operation on the replicated table through the local peer; returns its result."""
        try:
            reply = self.peer_request(lambda rid: rm.TableOp(rid, op, linearizable, self.addr), timeout_s)
        except TimeoutError:
            raise PeerUnavailableError(f"the replicated table did not answer {op[0]!r} within {timeout_s} s "
                                       f"(is a majority of its replicas alive?)") from None
        if not reply.ok:
            raise TableError(f"table operation {op[0]!r} failed: {reply.error}")
        return reply.result

    def table_async(self, op: tuple) -> None:
        """Fire and forget (the outcome is not needed, e.g. releasing a name of a dead actor)."""
        self.call_soon(lambda: self._send(self.peer_addr, rm.TableOp(self.new_id(), op, False, self.addr)))

    def future_of(self, ref: ObjectRef) -> Future:
        fut: Future = Future()

        def waiter():
            try:
                fut.set_result(self.get_values([ref], None)[0])
            except BaseException as exc:  # noqa: BLE001
                fut.set_exception(exc)

        threading.Thread(target=waiter, daemon=True, name="p2p-future").start()
        return fut

    def _refs_report(self, limit: int = 2000) -> list:
        out = []
        values = self.objects.values
        names = {PENDING: "pending", INLINE: "inline", STORED: "stored", ERROR: "error"}
        for oid in self.refs.object_ids()[:limit]:
            c = self.refs.counts(oid)
            if c is None:
                continue
            v = values.get(oid)
            out.append([oid, c["owned"], c["local"], c["pins"] + c["acks"], c["borrowers"],
                        names.get(v.state, "?") if v is not None else "unknown", v.size if v is not None else 0])
        return out

    def debug_state(self) -> dict:
        """A snapshot of this process's scheduling state, for debugging (read racily, from any thread)."""
        sub = self.submitter
        return {
            "proc": self.proc_id, "kind": self.kind,
            "tasks": {tid: {"name": r.name, "kind": r.kind, "deps_left": r.deps_left, "scheduled": r.scheduled,
                            "worker": r.held.worker_id if r.held else None} for tid, r in list(self.tasks.items())},
            "leases": [{"lease": h.lease_id, "worker": h.worker_id, "inflight": list(h.inflight),
                        "draining": h.draining, "wanted": h.wanted} for h in sub.held_leases()],
            "queues": {str(k[0]): {"queue": list(st.queue), "requests": list(st.requests)}
                       for k, st in list(sub.keys.items())},
            "ops": len(self.ops),
        }

    # ---- get ----------------------------------------------------------------------------------------

    def get_values(self, refs: list[ObjectRef], timeout: float | None) -> list:
        ids = [r._id for r in refs]
        deadline = deadline_of(timeout)
        values = self.objects.values
        if not all((v := values.get(oid)) is not None and v.state != PENDING for oid in ids):
            blocked = self.on_blocked()
            try:
                # Fail fast: the first error known is raised without waiting for the other objects.
                flags = self.objects.wait_ready(ids, len(ids), deadline, self._request_fetch, fail_fast=True)
            finally:
                if blocked:
                    self.on_unblocked()
            if not all(flags):
                for oid, flag in zip(ids, flags):
                    v = values.get(oid)
                    if flag and v is not None and v.state == ERROR:
                        raise serialization.error_from_bytes(v.error)
                raise timeout_error([i for i, f in zip(ids, flags) if not f], timeout)
        out = []
        for oid in ids:
            out.append(self._load(oid, deadline, timeout))
        return out

    def _load(self, oid: str, deadline, timeout):
        """One value; a stored object whose copies vanished is rebuilt (or re-asked of its owner) and read
        again, a few times at most."""
        for _attempt in range(5):
            v = self.objects.values.get(oid)
            if v is None:
                raise ObjectFreedError(f"object {oid} was freed while being read")
            try:
                return load_value(v, oid, self.read_stored)
            except ObjectLostError:
                if v.state != STORED:
                    raise
            self.call(lambda: self._lost_on_read(oid), timeout_s=30)
            flags = self.objects.wait_ready([oid], 1, deadline, self._request_fetch)
            if not flags[0]:
                raise timeout_error([oid], timeout)
        raise ObjectLostError(f"object {oid} could not be read after several attempts to rebuild it")

    def _lost_on_read(self, oid: str) -> None:
        v = self.objects.values.get(oid)
        if v is None or v.state != STORED:
            return
        v.locations = [loc for loc in v.locations if self._copy_readable(oid, loc)]
        if v.locations:
            v.locations = []  # every copy we know failed to read: treat them all as gone
        if self.refs.is_owned(oid):
            self._object_lost(oid, "no copy could be read")
        else:
            self._refetch(oid)

    def _request_fetch(self, ids: list[str]) -> None:
        self.ops.append(("fetch", ids))
        self.waker.wake()

    # Workers override these to lend their CPU back while they wait.
    def on_blocked(self) -> bool:
        return False

    def on_unblocked(self) -> None:
        pass

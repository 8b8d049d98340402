"""The client runtime: what every driver and worker runs to submit work and own objects.

It is the driver of the owner core (`ownership/owner.py`), which decides everything about this process's
tasks and objects. This module owns the sockets, the I/O thread and the hand-offs from user threads.

One I/O thread owns the sockets and the core; user threads never touch them. User threads serialize their
own arguments and values, then hand small operations to the I/O thread through one ordered queue (`ops`) —
including every ref created and dropped — so the I/O thread sees them in program order: a ref passed to a
task is always counted before the user's `del` of it. User threads read the object directory (with its lock)
in `get` and `wait`, and map stored values themselves.

Flow of a task: `submit` (user thread) -> the core schedules it once its ref arguments are ready -> the
submitter asks for a lease -> `PushTask` straight to the leased worker -> `TaskReply` -> values are
resolved, waiters woken, the lease reused or returned.

A driver's threads may run the loop themselves (`runtime/driving.py`): a thread about to block in `get`
takes the loop lock, sends what is queued and polls the sockets itself until its values are ready, so a
one-at-a-time call costs no hand-off to the I/O thread and back. Whoever runs a pass holds `_loop_lock`: the
core and the sockets are only ever touched under it, by one thread at a time.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future

from p2pcompute import serialization
from p2pcompute.errors import PeerUnavailableError, RemoteProtocolError, TableError
from p2pcompute.lease.submitter import SubmitterConfig
from p2pcompute.net import codec
from p2pcompute.net.effects import EffectRunner
from p2pcompute.net.transport import Transport, Waker
from p2pcompute.object_ref import _OP_DEC, _OP_INC
from p2pcompute.ownership import messages as om
from p2pcompute.ownership.actors import ReleaseName
from p2pcompute.ownership.directory import INLINE, STORED
from p2pcompute.ownership.owner import INLINE_MAX_BYTES, ForgetAddress, OwnerCore
from p2pcompute.ownership.store import LocalStore
from p2pcompute.ownership.task_record import TaskRecord  # noqa: F401 - re-exported for the API modules
from p2pcompute.runtime import introspect
from p2pcompute.runtime import messages as rm
from p2pcompute.runtime.actors import ActorManager
from p2pcompute.runtime.objects import ObjectTable
from p2pcompute.runtime.output import OutputBuffer
from p2pcompute.runtime.driving import LoopDriving, install_sigint, uninstall_sigint
from p2pcompute.runtime.reads import ValueReader

log = logging.getLogger("p2pcompute.client")

_TICK_NS = 100_000_000


def now_ns() -> int:
    return time.monotonic_ns()


class ClientRuntime(ValueReader, LoopDriving):
    def __init__(self, ctx, *, proc_id: str, kind: str, job_id: str, job_env: dict, peer_addr: str,
                 sock_dir: str, tcp_host: str | None = None, advertise_host: str | None = None,
                 worker_id: str | None = None, register_timeout_s: float = 30.0,
                 submitter_config: SubmitterConfig | None = None):
        self.proc_id = proc_id
        self.kind = kind
        self.peer_addr = peer_addr
        self.worker_id = worker_id
        self.transport = Transport(ctx, proc_id, "c", ipc_path=os.path.join(sock_dir, f"{proc_id}c"),
                                   tcp_host=tcp_host, advertise_host=advertise_host)
        self.addr = self.transport.address
        self.ops: deque = deque()
        self.waker = Waker()
        self.transport.add_fd(self.waker.fd)
        if submitter_config is None:
            from p2pcompute.config import system_config
            submitter_config = system_config().submitter  # P2P_SUBMITTER_*, init(_system_config=...)
        self.core = OwnerCore(proc_id, self.addr, job_id, job_env, peer_addr, submitter_config, ObjectTable())
        # The core's parts, named as the rest of the runtime reads them.
        self.refs = self.core.refs
        self.objects = self.core.objects
        self.submitter = self.core.submitter
        self.tasks = self.core.tasks
        self.actors = ActorManager(self)
        self._stores: dict[str, LocalStore] = {}
        self._deadline_ns = 0
        self._effects = EffectRunner(self._send, self.wake_at, {
            ForgetAddress: lambda eff: self.transport.forget(eff.addr),
            ReleaseName: lambda eff: self._send(self.peer_addr, rm.TableOp(
                self.new_id(), ("release", eff.key, eff.record), False, self.addr)),
        }, otherwise=lambda inner: self._run(self.core.run(now_ns(), self.core.apply, inner)))
        self._rpcs: dict[str, Future] = {}
        self._running = False
        self._thread: threading.Thread | None = None
        # User threads of a driver run the loop themselves (runtime/driving.py); P2P_DIRECT_CALLS=0 turns it off.
        self._init_driving(kind, os.environ.get("P2P_DIRECT_CALLS", "1") != "0")
        self._stopped = threading.Event()
        self.peer_info: dict = {}
        self.store: LocalStore | None = None
        self.handlers: dict = {}  # extra message handlers, for special processes (the keeper)
        self.cpu_lent = 0  # times a blocked get lent this worker's CPU to other tasks
        self._futures: queue.SimpleQueue | None = None  # ready futures for the futures thread to fill
        self._lock_futures = threading.Lock()
        # Workers queue their user code's output here (see runtime.output); drivers print what arrives.
        self.output = OutputBuffer()
        if kind == "driver":
            self.job_env = dict(job_env, driver_addr=self.addr)
        self._register(register_timeout_s)

    # The job is the core's (it travels with every task); workers learn theirs from their first task.
    @property
    def job_id(self) -> str:
        return self.core.job_id

    @job_id.setter
    def job_id(self, value: str) -> None:
        self.core.job_id = value

    @property
    def job_env(self) -> dict:
        return self.core.job_env

    @job_env.setter
    def job_env(self, value: dict) -> None:
        self.core.job_env = value

    @property
    def node_id(self) -> str:
        return self.core.node_id

    @node_id.setter
    def node_id(self, value: str) -> None:
        self.core.node_id = value

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
        if self._direct:
            self.objects.block = self._block
            install_sigint(self)
        self._thread = threading.Thread(target=self._loop, name=f"p2p-io-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self._running:
            return
        done = threading.Event()

        def leave():
            self._run(self.submitter.release_all())
            self._run(self.core.actors.release_all())
            self._apply(self.core.free_all_stored)
            self._send(self.peer_addr, rm.Unregister(self.proc_id))
            self._running = False
            done.set()

        self.call_soon(leave)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        mine = threading.current_thread() is self._thread or self._driver == threading.get_ident()
        if not mine:
            self._loop_lock.acquire()  # no user thread is in a pass when the sockets close
        try:
            self._direct = False
            uninstall_sigint(self)
            self.transport.close()
            self.waker.close()
        finally:
            if not mine:
                self._loop_lock.release()

    # ---- hand-offs from user threads ----------------------------------------------------------------

    def call_soon(self, fn) -> None:
        self.ops.append(fn)
        self.kick()

    def call(self, fn, timeout_s: float | None = None):
        """Run `fn` on the I/O thread and wait for its result (for rare operations)."""
        if threading.current_thread() is self._thread or self._driver == threading.get_ident():
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
        return self.core.new_id()

    # ---- the loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        lock = self._loop_lock
        try:
            while self._running:
                if self._park_wanted:
                    self._park()
                    continue
                with lock:
                    if self._running:
                        self._pass(self._poll_timeout_ms())
        except BaseException:  # noqa: BLE001 - the I/O thread must report, never vanish silently
            log.exception("p2pcompute I/O thread crashed")
            self.core.fail_everything("the p2pcompute I/O thread crashed; see the log above")
        finally:
            self._stopped.set()

    def _pass(self, timeout_ms: float) -> None:
        """One turn of the loop: wait for input, then handle it (under `_loop_lock`)."""
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

    def _poll_timeout_ms(self) -> float:
        # Operations that need the loop soon wake it (`call_soon`, `submit`); the rest — a ref made or
        # dropped, a borrow to confirm — wait for the next pass or tick: an extra pass for each of them
        # was two of every sync task's four passes.
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
        elif code == "received":  # op[3]: the process that sent the message carrying the ref
            self._run(self.refs.on_received(op[1], op[2], op[3]))
        elif code == "unpin":
            self._run(self.refs.unpin(op[1]))
        elif code == "fetch":
            self._apply(self.core.fetch, op[1])
        elif code == "output":
            self._send_output()
        elif code == "send":
            self._send(op[1], op[2])

    def _tick(self, now: int) -> None:
        self._deadline_ns = now + _TICK_NS
        self.waker.rearm()
        self._run(self.core.on_tick(now))

    # ---- effects ------------------------------------------------------------------------------------

    def _apply(self, fn, *args) -> None:
        """Run one of the core's operations now and carry out its effects (I/O thread)."""
        self._run(self.core.run(now_ns(), fn, *args))

    def _run(self, effects: list) -> None:
        """Carry out effects: the core's outward ones, and those of its parts (handed back to the core)."""
        self._effects.run(effects)

    run_effects = _run  # for the runtime's helpers (actors, cancellation): I/O thread only

    def wake_at(self, at_ns: int) -> None:
        """Tick the core at or after `at_ns` (I/O thread)."""
        if at_ns < self._deadline_ns:
            self._deadline_ns = at_ns

    def _send(self, to: str, msg) -> None:
        try:
            self.transport.send(to, codec.encode(msg))
        except ValueError as exc:
            log.warning("cannot send %s to %s: %s", type(msg).__name__, to, exc)
            rec = self.core.tasks.get(msg.task_id) if type(msg) is rm.PushTask else None
            if rec is not None:
                self.core.push_not_sent(to, msg)
                if not rec.done:
                    # A task that cannot be sent (its function or arguments too big for one message) fails
                    # with the reason, rather than leaving its get() waiting for ever.
                    error = serialization.system_error_bytes(exc)
                    self.call_soon(lambda: self._apply(self.core._finish_with_error, rec, error))

    send = _send  # I/O thread: send a message to the process at an address

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
        if self.core.handles(msg):
            self._run(self.core.on_message(now_ns(), sender, msg))
        elif t is rm.LogLines:
            self._on_log(msg)
        elif t is rm.NodesReply or t is rm.PeerStatusReply or t is rm.TableOpReply or t is rm.MemoryReply:
            self.answer_request(msg)
        elif t is rm.Warning_:
            sys.stderr.write(f"p2pcompute: {msg.text}\n")
            sys.stderr.flush()
        elif t is rm.CancelTask:
            self._on_cancel_request(msg)
        elif t is rm.RefsRequest:
            self._send(msg.reply_to, rm.RefsReply(msg.request_id, self.proc_id, introspect.refs_report(self)))
        elif t in self.handlers:
            self.handlers[t](msg)
        elif t is rm.KeeperAddress or t is rm.DetachedCreated or t is om.ObjectFetched:
            self.answer_request(msg)

    def _on_unreachable(self, ev) -> None:
        if ev.address == self.peer_addr:
            log.error("lost the local peer at %s: %s", ev.address, ev.reason)
        else:
            # Deaths of processes are reported by peers (ProcessDied); this is only a hint.
            log.info("process at %s unreachable: %s", ev.address, ev.reason)

    # ---- submitting ---------------------------------------------------------------------------------

    def submit(self, rec: TaskRecord) -> None:
        """User thread: hand a task to the loop. While the I/O thread is parked, a user thread drives the loop
        and sends it: the next `get` on this thread does, first thing, or the I/O thread once it takes the
        loop back (at most _PARK_IDLE_S later). So a burst of submissions still goes out in batches."""
        self.ops.append(("submit", rec))
        if not (self._parked and self._driver is None and self._may_drive()):
            self.waker.wake()  # the I/O thread, or another thread driving the loop now (its poll wakes)

    def _submit(self, rec: TaskRecord) -> None:
        self._run(self.core.submit(now_ns(), rec))

    def push_message(self, rec: TaskRecord, worker_id: str, seq: int = 0) -> rm.PushTask:
        return self.core.push_message(rec, worker_id, seq)

    def _finish_with_error(self, rec: TaskRecord, error: bytes) -> None:
        self._apply(self.core._finish_with_error, rec, error)

    # ---- objects ------------------------------------------------------------------------------------

    def put_local(self, object_id: str, ser: serialization.Serialized) -> None:
        """User thread: make a new owned object ready (inline, or written to the local store)."""
        size = ser.nbytes
        if size <= INLINE_MAX_BYTES:
            self.objects.resolve(object_id, INLINE, data=ser.to_blob(), size=size, contained=ser.refs)
            stored = None
        else:
            self.store.write(object_id, ser)
            self.objects.resolve(object_id, STORED, size=size,
                                 locations=[[self.node_id, self.peer_addr, self.store.path]], contained=ser.refs)
            stored = size
        refs = list(ser.refs)
        self.call_soon(lambda: self._apply(self.core.on_put, object_id, refs, stored))

    # ---- cancellation -------------------------------------------------------------------------------

    def cancel(self, object_id: str, force: bool, recursive: bool = True) -> None:
        self.call_soon(lambda: self._apply(self.core.cancel, object_id, force, recursive))

    def _on_cancel_request(self, msg: rm.CancelTask) -> None:
        # A driver executes nothing: a cancel sent here is a borrower asking us, the owner, to cancel our task.
        from p2pcompute.runtime import remote_cancel
        remote_cancel.on_cancel_request(self, msg)

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

    def answer_request(self, msg) -> None:
        """I/O thread: `msg` answers the request its `request_id` names, if one of ours still waits."""
        fut = self._rpcs.pop(msg.request_id, None)
        if fut is not None:
            fut.set_result(msg)

    def wait_stopped(self) -> None:
        """Block until the I/O loop has stopped."""
        self._stopped.wait()

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

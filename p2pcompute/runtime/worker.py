"""The worker process: executes pushed tasks and actor calls, and is a full client for nested work.

The main thread owns the task socket: it receives `PushTask`, runs user code and replies, with no thread
hand-off on the hot path. The client runtime's I/O thread (as in a driver) owns everything else: nested
submissions, objects this worker owns, cancellation, output forwarding.

Tasks that arrive while one runs wait in a local queue; before each task the socket is drained so a cancel
for a queued task is seen before it would start. When a task blocks in `get`, tasks queued behind it go back
to their submitters (they may be what it waits for) and the peer lends its CPU to someone else.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextvars
import ctypes
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections import deque

from p2pcompute import serialization
from p2pcompute.errors import (ActorDiedError, ArgumentLostError, InvalidArgumentError, ObjectLostError,
                               RemoteProtocolError, TaskCancelledError, TaskError, make_actor_init_error)
from p2pcompute.net import codec
from p2pcompute.net.transport import Context, CurveKeys, Transport
from p2pcompute.ownership.store import LocalStore
from p2pcompute.ownership.wire_values import (ErrorResult, InlineResult, InlineSlot, StoredResult, result_to_wire,
                                              slot_from_wire)
from p2pcompute.runtime import context as runtime_context
from p2pcompute.runtime import gpus
from p2pcompute.runtime import messages as rm
from p2pcompute.runtime import output
from p2pcompute.runtime.client import INLINE_MAX_BYTES, ClientRuntime
from p2pcompute.runtime.task_events import TaskEventLog
from p2pcompute.serialization import ArgSlot

QUICK_NS = 200_000  # a task that ran faster than this may have its reply held briefly (see Executor.run)

log = logging.getLogger("p2pcompute.worker")

_current = output.current
_Running = output.Running


class WorkerClient(ClientRuntime):
    """The worker's client runtime: adds blocking hooks and cancellation of running tasks."""

    executor: "Executor"

    def on_blocked(self) -> bool:
        ex = getattr(self, "executor", None)
        if ex is None or threading.current_thread() is not threading.main_thread() or ex.running is None:
            return False
        ex.bounce_queued()
        self.ops.append(("send", self.peer_addr, _lm().WorkerBlocked(self.worker_id)))
        self.waker.wake()
        return True

    def on_unblocked(self) -> None:
        self.ops.append(("send", self.peer_addr, _lm().WorkerUnblocked(self.worker_id)))
        self.waker.wake()

    def _dispatch(self, sender: str, msg) -> None:
        if type(msg) is rm.StealTasks:
            ex = getattr(self, "executor", None)
            if ex is not None:
                given = ex.give_back([t for t in msg.task_ids if isinstance(t, str)])
                if given:
                    self._send(msg.reply_to, rm.TasksBounced(given))
            return
        super()._dispatch(sender, msg)

    def _on_cancel_request(self, msg: rm.CancelTask) -> None:
        from p2pcompute.runtime import remote_cancel
        if remote_cancel.on_cancel_request(self, msg):
            return  # a borrower of a ref we own asks us, its owner, to cancel our task
        ex = getattr(self, "executor", None)
        if ex is None:
            return
        if ex.actor_id is None and ex.running != msg.task_id and ex.give_back([msg.task_id]):
            # Queued here, not started: it will never run; say so now rather than when its turn comes.
            error = serialization.system_error_bytes(TaskCancelledError(f"task {msg.task_id} was cancelled"))
            self._send(msg.reply_to, rm.TaskReply(msg.task_id, [], 0, self.worker_id, ex.node_id, error))
            return
        if msg.recursive and ex.running == msg.task_id and ex.actor_id is None:
            # Cancellation is recursive, as in Ray: what the cancelled task submitted goes too. A task
            # worker runs one task at a time, so every unfinished task this process owns is its child.
            for rec in list(self.tasks.values()):
                if not rec.done:
                    self.cancel(rec.return_ids[0] if rec.return_ids else rec.task_id, msg.force)
        ex.cancel(msg.task_id)


def _lm():
    from p2pcompute.lease import messages
    return messages


class Executor:
    def __init__(self, client: WorkerClient, tasks: Transport, node_id: str):
        self.client = client
        self.tasks = tasks
        self.node_id = node_id
        self.queue: deque = deque()
        self.code: dict[str, object] = {}
        # Code that came with a push that did not run here (stolen back, bounced, cancelled): its submitter
        # sends a code id's code only once per worker, so later pushes of that function come without it.
        self._code_blobs: dict[str, bytes] = {}
        self.stores: dict[str, LocalStore] = {}
        self.cancelled: set[str] = set()
        self.running: str | None = None
        self.job_bound = False
        self.actor = None
        self.actor_id: str | None = None
        self.actor_name = ""
        self.actor_failed: bytes | None = None
        self.actor_owner = ""            # who created the actor: told when the actor ends itself (exit_actor)
        self.gpu_dir = ""                # where the peer may have left GPU ids for us; read before the first task
        self._exit_pending = False       # exit_actor() ran on an actor thread; the main thread ends the actor
        # Actor calls that arrived before the constructor did; run once it has (see _actor_call).
        self.early_calls: list = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.semaphore: asyncio.Semaphore | None = None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._interrupt_target: str | None = None
        self._stop = False
        self.output = client.output
        # Work stealing (see give_back): the I/O thread may take back tasks the main thread has not started.
        self._steal_lock = threading.Lock()
        self._stolen: set[str] = set()
        # Tasks handed back by bounce_queued, whose push has left here: a steal of one of them must not hand
        # it back a second time (its submitter may have pushed it elsewhere meanwhile, or back here). A push
        # of the task arriving again takes it off. Oldest forgotten first, beyond _MAX_BOUNCED.
        self._bounced: dict[str, None] = {}
        self._finished: deque = deque(maxlen=4096)
        self._finished_set: set[str] = set()
        self._quick_ns: dict[str, int] = {}  # recent run time of each function or method, by name
        # What ran here and when, for the state API and the timeline (sent to the peer in batches).
        self.events = TaskEventLog(client.worker_id or client.proc_id, node_id)
        self.env_cache_dir = ""             # where runtime_env packages are unpacked (set by main)
        self.env_error: Exception | None = None
        client.task_events = self.events

    # ---- receiving ----------------------------------------------------------------------------------

    def _receive(self, timeout_ms: float | None) -> None:
        frames, _, _ = self.tasks.poll(timeout_ms)
        for sender, data in frames:
            try:
                msg = codec.decode(data)
            except RemoteProtocolError as exc:
                log.warning("dropped a frame from %s: %s", sender, exc)
                continue
            if type(msg) is rm.PushTask:
                if self._bounced:
                    with self._steal_lock:
                        self._bounced.pop(msg.task_id, None)
                # The refs it carries are taken in now, not when it runs: a borrowed one is confirmed with its
                # owner while the sender is surely alive (a task may wait here longer than the owner's grace
                # for a dead forwarder). The message pins them until it runs or leaves (`_absorb_unrun`).
                if msg.refs:
                    submitter = _proc_of(msg)
                    for ref in msg.refs:
                        self.client.ops.append(("received", ref[0], ref[1], submitter))
                self.queue.append(msg)
                self.events.received(msg.task_id)
            elif type(msg) is rm.StopProcess:
                self._stop = True

    def run(self) -> None:
        queue = self.queue
        tasks = self.tasks
        last_rx = 0
        while not self._stop:
            if self._exit_pending:
                self._end_actor()
            self._receive(0 if queue else (200 if self.events.pending else 1000))
            while queue and not self._stop:
                msg = queue.popleft()
                # Replies to a run of quick tasks go out together; before anything that may take a while
                # (or that we know nothing of yet), what was held goes out, so no reply waits behind it.
                if self._quick_ns.get(msg.name, QUICK_NS) < QUICK_NS and tasks.holding() < 64:
                    tasks.hold()
                else:
                    tasks.flush()
                t0 = time.perf_counter_ns()
                self._execute(msg)
                took = time.perf_counter_ns() - t0
                prev = self._quick_ns.get(msg.name)
                self._quick_ns[msg.name] = took if prev is None else (prev * 3 + took) // 4
                if not queue:
                    tasks.flush()  # nothing known to follow: the reply goes now, not after another poll
                    break  # the outer loop takes in what arrived
                # Between tasks, take in what arrived, so a cancel for a queued task is seen before it runs —
                # after a long task, or after a run of quick ones at most every _RECEIVE_EVERY_NS: a poll
                # (~5 us here) per call of a stream of quick actor calls is not worth it, and a cancel seen
                # 1 ms later is one that arrived 1 ms later.
                now = t0 + took
                if now - last_rx >= _RECEIVE_EVERY_NS:
                    last_rx = now
                    self._receive(0)
            tasks.flush()
            self.events.flush_if_due(lambda data: tasks.send(self.client.peer_addr, data))

    def bounce_queued(self) -> None:
        """The running task is about to block: give tasks queued behind it back to their submitters."""
        if threading.current_thread() is threading.main_thread():
            self.tasks.flush()  # the replies held so far go now: the block may last (run() owns `tasks`)
        if self.actor is not None or self.actor_id is not None:
            return  # actor calls must run here, in order
        self._receive(0)
        by_owner: dict[str, list] = {}
        keep, dropped = [], []
        with self._steal_lock:
            for msg in self.queue:
                if msg.kind != "task":
                    keep.append(msg)
                    continue
                dropped.append(msg)
                if msg.task_id in self._stolen:
                    # Already handed back by a steal: its submitter has it. Reporting it again would make it
                    # take the task off whichever worker it pushed it to since.
                    self._stolen.discard(msg.task_id)
                    continue
                by_owner.setdefault(msg.owner_addr, []).append(msg.task_id)
                self._bounced[msg.task_id] = None
                if len(self._bounced) > _MAX_BOUNCED:
                    del self._bounced[next(iter(self._bounced))]
        for msg in dropped:
            self._absorb_unrun(msg)
        # In place: the run loop holds this very deque.
        self.queue.clear()
        self.queue.extend(keep)
        for owner, ids in by_owner.items():
            self.tasks.send(owner, codec.encode(rm.TasksBounced(ids)))

    def cancel(self, task_id: str) -> None:
        """I/O thread: cancel a queued task (skip it) or interrupt a running one."""
        self.cancelled.add(task_id)
        if self.running == task_id and self.loop is None:
            self._interrupt_target = task_id
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_interrupt(self, signum, frame) -> None:
        target = self._interrupt_target
        self._interrupt_target = None
        if target is not None and self.running == target:
            raise TaskCancelledError(f"task {target} was cancelled while running")

    # ---- executing ----------------------------------------------------------------------------------

    def _bind_job(self, msg: rm.PushTask) -> None:
        env = msg.job_env
        if self.job_bound or not env:
            return
        self.job_bound = True
        # Nested submissions from here carry the same job environment, so their workers bind alike.
        self.client.job_env = dict(env)
        driver = env.get("driver_addr")
        if isinstance(driver, str):
            self.output.driver_addr = driver
        path = env.get("sys_path")
        if isinstance(path, list):
            sys.path[:] = [p for p in path if isinstance(p, str)] + [p for p in sys.path if p not in path]
        cwd = env.get("cwd")
        if isinstance(cwd, str) and os.path.isdir(cwd):
            try:
                os.chdir(cwd)
            except OSError:
                pass
        if env.get("runtime_env"):
            from p2pcompute import runtime_env
            try:
                runtime_env.apply(env["runtime_env"], self.client, self.env_cache_dir)
            except Exception as exc:  # noqa: BLE001 - every task of the job then fails with this error
                self.env_error = exc
        self.client.job_id = msg.job_id
        self.client.submitter.job_id = msg.job_id

    def _absorb(self, msg: rm.PushTask) -> None:
        """A push that will not run here still carried what its submitter sends once per worker — the job's
        environment and the function's code — and will not send again: keep them for the pushes that follow."""
        self._bind_job(msg)
        if msg.code is not None and msg.code_id not in self.code:
            self._code_blobs[msg.code_id] = msg.code

    def _absorb_unrun(self, msg: rm.PushTask) -> None:
        """A push leaves without running here (stolen back, handed back): what it sent once is kept, and the
        refs it pinned on arrival are let go."""
        self._absorb(msg)
        self._unpin_refs(msg)

    def _load_code(self, msg: rm.PushTask):
        obj = self.code.get(msg.code_id)
        if obj is None:
            code = msg.code if msg.code is not None else self._code_blobs.pop(msg.code_id, None)
            if code is None:
                raise RuntimeError(f"the submitter did not send code {msg.code_id} to this worker")
            obj = serialization.loads_code(code)
            self.code[msg.code_id] = obj
        return obj

    def _store(self, path: str) -> LocalStore:
        store = self.stores.get(path)
        if store is None:
            store = self.stores[path] = LocalStore(path)
        return store

    def _args(self, msg: rm.PushTask):
        out = self._read_args(msg)
        self.events.args_done(msg.task_id)
        return out

    def _read_args(self, msg: rm.PushTask):
        if msg.args is not None:
            blob = msg.args
            if blob == _EMPTY_ARGS and not msg.slots:
                return (), {}
        elif msg.args_object:
            oid, size, path, holder_addr, holder_id = msg.args_object[:5]
            blob = self._read_arg(oid, size, [[holder_id, holder_addr, path]], msg.owner_addr)
        else:
            return (), {}
        args, kwargs = serialization.deserialize(blob)
        if msg.slots:
            values = []
            for entry in msg.slots:
                slot = slot_from_wire(entry)
                if type(slot) is InlineSlot:
                    values.append(serialization.deserialize(slot.blob, writable=True))
                else:
                    values.append(serialization.deserialize(
                        self._read_arg(slot.object_id, slot.size, slot.locations, slot.owner_addr)))
            args = tuple(values[a.index] if type(a) is ArgSlot else a for a in args)
            kwargs = {k: (values[v.index] if type(v) is ArgSlot else v) for k, v in kwargs.items()}
        return args, kwargs

    def _read_arg(self, oid: str, size: int, locations: list, owner: str) -> memoryview:
        try:
            return self.client.read_object(oid, size, locations, owner)
        except ObjectLostError as exc:
            raise ArgumentLostError(f"argument {oid} of this task could not be read: {exc}", oid) from None

    def give_back(self, task_ids: list[str]) -> list[str]:
        """I/O thread: tasks not started (queued here, or not arrived yet) will not run here; returns them."""
        with self._steal_lock:
            given = [t for t in task_ids
                     if t != self.running and t not in self._finished_set and t not in self._bounced]
            self._stolen.update(given)
        return given

    def _claim(self, task_id: str) -> bool:
        """Main thread: start `task_id` unless it was given back meanwhile."""
        with self._steal_lock:
            if task_id in self._stolen:
                self._stolen.discard(task_id)
                return False
            self.running = task_id
            return True

    def _finish(self, task_id: str) -> None:
        with self._steal_lock:
            if len(self._finished) == self._finished.maxlen:
                self._finished_set.discard(self._finished[0])
            self._finished.append(task_id)
            self._finished_set.add(task_id)

    def _execute(self, msg: rm.PushTask) -> None:
        if self.gpu_dir:
            # A never-used pool worker may have been granted to a GPU lease: its ids come by file (gpus.py).
            gpus.read_assignment(self.gpu_dir, self.client.worker_id or "")
            self.gpu_dir = ""
        if msg.kind == "task" and not self._claim(msg.task_id):
            self._absorb_unrun(msg)
            return  # stolen back by its submitter, which runs it elsewhere
        self.events.begin(msg)
        try:
            self._execute_claimed(msg)
        finally:
            if msg.kind == "task":
                self._finish(msg.task_id)

    def _execute_claimed(self, msg: rm.PushTask) -> None:
        deferred = False
        try:
            if msg.task_id in self.cancelled:
                self.cancelled.discard(msg.task_id)
                self._absorb(msg)
                self._reply_system(msg, TaskCancelledError(f"task {msg.name} ({msg.task_id}) was cancelled"))
                return
            self._bind_job(msg)
            if self.env_error is not None:
                self._reply_system(msg, self.env_error)
                return
            if msg.kind == "actor_call":
                deferred = self._actor_call(msg)
            else:
                self._run_sync(msg)
        finally:
            # The message pins the refs it carries until its arguments are read: a call run later (on a
            # pool thread, or after the constructor) unpins them itself, once it has.
            if not deferred:
                self._unpin_refs(msg)

    def _unpin_refs(self, msg: rm.PushTask) -> None:
        for ref in msg.refs:
            self.client.ops.append(("unpin", ref[0]))

    def _label(self, msg: rm.PushTask) -> str:
        label = msg.name if msg.kind == "task" else (self.actor_name or msg.name)
        self.output.last_label = label
        return label

    def _send_output(self, owner_addr: str) -> None:
        """Send what the task printed before its reply; through the reply's own connection when the
        driver is the owner, so the lines arrive first."""
        for forwarder in (sys.stdout, sys.stderr):
            end = getattr(forwarder, "end_of_task", None)
            if end is not None:
                end()
        driver = self.output.driver_addr
        if driver is None or not self.output.has_task():
            return
        for stream, lines in self.output.take(task_thread=True):
            self.tasks.send(driver, codec.encode(rm.LogLines(stream, lines)))

    def _run_sync(self, msg: rm.PushTask) -> None:
        start = time.perf_counter_ns()
        token = _current.set(_Running(msg.task_id, self._label(msg), msg.owner_addr, msg.name))
        self.running = msg.task_id
        try:
            fn = self._load_code(msg)
            args, kwargs = self._args(msg)
            if msg.kind == "actor_create":
                self._create_actor(msg, fn, args, kwargs)
                result = None
            else:
                result = fn(*args, **kwargs)
                del args, kwargs
            self.running = None
            returns = self._pack_returns(msg, result)
        except (TaskCancelledError, ArgumentLostError, RemoteProtocolError) as exc:
            self.running = None
            self._interrupt_target = None
            _current.reset(token)
            self._reply_system(msg, exc)
            return
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
            self.running = None
            if msg.kind == "actor_create":
                # The actor is dead (as in Ray): its owner learns it from this reply, and every call fails
                # with an ActorDiedError that carries the constructor's error and traceback.
                cause = exc.cause if isinstance(exc, TaskError) else exc
                self.actor_failed = serialization.system_error_bytes(make_actor_init_error(
                    msg.actor_id, msg.name, cause, _user_traceback(exc), os.getpid(), self.node_id))
                returns = None
            else:
                returns = self._error_returns(msg, exc)
        finally:
            self.running = None
            self.cancelled.discard(msg.task_id)
        _current.reset(token)
        if returns is None:
            self._send_output(msg.owner_addr)
            self.tasks.send(msg.owner_addr, codec.encode(rm.TaskReply(
                msg.task_id, [], 0, self.client.worker_id, self.node_id, self.actor_failed)))
        else:
            self._reply(msg, returns, time.perf_counter_ns() - start)
        if msg.kind == "actor_create" and self.early_calls:
            # Calls that overtook the constructor run now, ahead of anything that arrived after them.
            self.queue.extendleft(reversed(self.early_calls))
            self.early_calls = []

    def _create_actor(self, msg, cls, args, kwargs) -> None:
        self.actor_id = msg.actor_id
        self.actor_name = msg.name
        self.actor_owner = msg.owner_addr
        opts = msg.options or {}
        is_async = any(inspect.iscoroutinefunction(getattr(cls, name, None)) for name in dir(cls)
                       if not name.startswith("__"))
        concurrency = opts.get("max_concurrency")
        if is_async:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="p2p-actor-loop", daemon=True).start()
            limit = concurrency if isinstance(concurrency, int) and concurrency > 0 else 1000

            async def make_semaphore():
                return asyncio.Semaphore(limit)

            self.semaphore = asyncio.run_coroutine_threadsafe(make_semaphore(), self.loop).result()
        elif isinstance(concurrency, int) and concurrency > 1:
            self.pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="p2p-actor")
        self.actor = cls(*args, **kwargs)

    # ---- actor calls --------------------------------------------------------------------------------

    def _actor_call(self, msg: rm.PushTask) -> bool:
        """Run or start an actor call; True when it runs later (parked, or on a pool thread) and will unpin
        its message's refs itself."""
        if self.actor is None and self.actor_failed is None and self.actor_id in (None, msg.actor_id):
            # The owner publishes the actor's address as soon as it pushes the constructor, so a call from
            # another caller (another connection) can overtake the constructor: it waits for it here.
            self.early_calls.append(msg)
            return True
        if self.actor is None or self._exit_pending or msg.actor_id != self.actor_id:
            error = ActorDiedError(f"actor {msg.actor_id} is not running here"
                                   + (": its constructor failed" if self.actor_failed else ""))
            if self.actor_failed is not None and msg.actor_id == self.actor_id:
                self._reply(msg, [result_to_wire(ErrorResult(self.actor_failed, [])) for _ in msg.return_ids], 0)
            else:
                self._reply_system(msg, error)
            return
        if self.loop is not None:
            self._actor_call_async(msg)
        elif self.pool is not None:
            ctx = contextvars.copy_context()
            self.pool.submit(ctx.run, self._actor_call_threaded, msg)
            return True
        else:
            self._actor_call_inline(msg)
        return False

    def _method(self, msg: rm.PushTask):
        if msg.method == "__ray_ready__":
            return _ready
        if msg.method == "__ray_terminate__":
            return _terminate
        if not isinstance(msg.method, str) or msg.method.startswith("__") and msg.method != "__call__":
            raise InvalidArgumentError(f"{msg.method!r} is not a callable actor method")
        return getattr(self.actor, msg.method)

    # ---- an actor ending itself: exit_actor() / __ray_terminate__ -------------------------------------

    def _exited_error(self) -> ActorDiedError:
        return ActorDiedError(f"actor {self.actor_name} ({self.actor_id}) exited: exit_actor() was called",
                              self.actor_id)

    def _end_actor(self) -> None:
        """Main thread: the actor called exit_actor(). Calls queued here fail with ActorDiedError, atexit
        handlers run, the owner is told (so the actor is not restarted and its name is freed), and the
        process ends — by the owner's kill, or by itself if no kill comes."""
        self._exit_pending = False
        if self.actor is None:
            return
        self.actor = None
        self.actor_failed = serialization.system_error_bytes(self._exited_error())
        self._receive(0)
        while self.queue:
            self._execute(self.queue.popleft())  # answered with the actor-died error (see _actor_call)
        self.tasks.flush()
        import atexit
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001 - a failing handler must not keep the actor alive
            log.exception("an atexit handler of actor %s failed", self.actor_id)
        if self.actor_owner:
            # Through the channel the replies took, so the owner sees every reply before the kill (which fails
            # the calls it still has in flight): the task socket for a plain actor, the I/O thread otherwise.
            kill = rm.KillActor(self.actor_id, True)
            if self.loop is None and self.pool is None:
                self.tasks.send(self.actor_owner, codec.encode(kill))
                self.tasks.flush()
            else:
                self.client.ops.append(("send", self.actor_owner, kill))
                self.client.waker.wake()
        # The owner's kill ends this process; until then, calls still arriving get the actor-died error.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            self._receive(100)
            while self.queue:
                self._execute(self.queue.popleft())
            self.tasks.flush()
        os._exit(0)

    def _on_exit_call(self, msg: rm.PushTask, threaded: bool) -> None:
        error = serialization.system_error_bytes(self._exited_error())
        reply = rm.TaskReply(msg.task_id, [], 0, self.client.worker_id, self.node_id, error)
        if threaded:
            self._exit_pending = True
            self.client.ops.append(("send", msg.owner_addr, reply))
            self.client.waker.wake()
        else:
            self._send_output(msg.owner_addr)
            self.tasks.send(msg.owner_addr, codec.encode(reply))
            self._end_actor()

    def _actor_call_inline(self, msg: rm.PushTask) -> None:
        start = time.perf_counter_ns()
        token = _current.set(_Running(msg.task_id, self._label(msg), msg.owner_addr, msg.name))
        self.running = msg.task_id
        try:
            args, kwargs = self._args(msg)
            result = self._method(msg)(*args, **kwargs)
            del args, kwargs
            self.running = None
            returns = self._pack_returns(msg, result)
        except (TaskCancelledError, ArgumentLostError, RemoteProtocolError) as exc:
            self.running = None
            _current.reset(token)
            self._reply_system(msg, exc)
            return
        except _exit_type():
            self.running = None
            _current.reset(token)
            self._on_exit_call(msg, threaded=False)
            return
        except BaseException as exc:  # noqa: BLE001
            self.running = None
            returns = self._error_returns(msg, exc)
        finally:
            self.running = None
        _current.reset(token)
        self._reply(msg, returns, time.perf_counter_ns() - start)

    def _actor_call_threaded(self, msg: rm.PushTask) -> None:
        start = time.perf_counter_ns()
        _current.set(_Running(msg.task_id, self._label(msg), msg.owner_addr, msg.name))
        try:
            try:
                args, kwargs = self._args(msg)
            finally:
                self._unpin_refs(msg)  # the refs in the arguments are counted now (or were never read)
            returns = self._pack_returns(msg, self._method(msg)(*args, **kwargs))
        except _exit_type():
            self._on_exit_call(msg, threaded=True)
            return
        except BaseException as exc:  # noqa: BLE001
            returns = self._error_returns(msg, exc)
        self._reply_via_io(msg, returns, time.perf_counter_ns() - start)

    def _actor_call_async(self, msg: rm.PushTask) -> None:
        try:
            args, kwargs = self._args(msg)
            method = self._method(msg)
        except BaseException as exc:  # noqa: BLE001
            self._reply(msg, self._error_returns(msg, exc), 0)
            return
        running = _Running(msg.task_id, self._label(msg), msg.owner_addr, msg.name)

        async def call():
            _current.set(running)
            start = time.perf_counter_ns()
            async with self.semaphore:
                try:
                    result = method(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                    returns = self._pack_returns(msg, result)
                except _exit_type():
                    self._on_exit_call(msg, threaded=True)
                    return
                except BaseException as exc:  # noqa: BLE001
                    returns = self._error_returns(msg, exc)
            self._reply_via_io(msg, returns, time.perf_counter_ns() - start)

        # Start in order: each call is scheduled on the loop in arrival order.
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(call()))

    # ---- results ------------------------------------------------------------------------------------

    def _pack_returns(self, msg: rm.PushTask, result) -> list:
        self.events.exec_done(msg.task_id)
        n = len(msg.return_ids)
        if n == 1:
            if result is None:
                return _NONE_RETURNS
            values = [result]
        elif n == 0:
            values = []
        else:
            if not isinstance(result, (tuple, list)) or len(result) != n:
                raise InvalidArgumentError(
                    f"{msg.name} was declared with num_returns={n} but returned "
                    f"{type(result).__name__}" + (f" of length {len(result)}" if hasattr(result, "__len__") else ""))
            values = list(result)
        owner_id = msg.owner_addr and _proc_of(msg)
        out = []
        for oid, value in zip(msg.return_ids, values):
            ser = serialization.serialize(value)
            refs = [list(r) for r in ser.refs]
            for inner_id, inner_owner in ser.refs:
                self.client.ops.append(("sent", inner_id, inner_owner, owner_id))
            size = ser.nbytes
            if size <= INLINE_MAX_BYTES:
                out.append(result_to_wire(InlineResult(ser.to_blob(), refs)))
            else:
                store = self.client.store
                store.write(oid, ser)
                self.client.ops.append(("send", self.client.peer_addr,
                                        _om().ObjectSealed(oid, size, msg.owner_addr)))
                self.client.waker.wake()
                out.append(result_to_wire(StoredResult(size, refs, store.path, self.node_id, self.client.peer_addr)))
        return out

    def _error_returns(self, msg: rm.PushTask, exc: BaseException) -> list:
        blob = serialization.serialize_error(exc, function_name=msg.name, pid=os.getpid(), node_id=self.node_id,
                                             tb=_user_traceback(exc))
        names = serialization.exception_type_names(exc)
        self.events.failed(msg.task_id, type(exc).__name__, _user_traceback(exc))
        return [result_to_wire(ErrorResult(blob, names)) for _ in msg.return_ids]

    def _reply(self, msg: rm.PushTask, returns: list, exec_ns: int) -> None:
        reply = rm.TaskReply(msg.task_id, returns, exec_ns, self.client.worker_id, self.node_id, None)
        self.events.end(msg.task_id, returns)
        self._send_output(msg.owner_addr)
        self.tasks.send(msg.owner_addr, codec.encode(reply))

    def _reply_via_io(self, msg: rm.PushTask, returns: list, exec_ns: int) -> None:
        """Replies from actor threads or the event loop go through the I/O thread, after pending output."""
        reply = rm.TaskReply(msg.task_id, returns, exec_ns, self.client.worker_id, self.node_id, None)
        self.events.end(msg.task_id, returns)
        self.client.ops.append(("output",))
        self.client.ops.append(("send", msg.owner_addr, reply))
        self.client.waker.wake()

    def _reply_system(self, msg: rm.PushTask, exc: BaseException) -> None:
        reply = rm.TaskReply(msg.task_id, [], 0, self.client.worker_id, self.node_id,
                             serialization.system_error_bytes(exc))
        self.events.end(msg.task_id, None, f"{type(exc).__name__}: {exc}")
        if self.loop is not None or self.pool is not None:
            self.client.ops.append(("send", msg.owner_addr, reply))
            self.client.waker.wake()
        else:
            self._send_output(msg.owner_addr)
            self.tasks.send(msg.owner_addr, codec.encode(reply))


_EMPTY_ARGS = serialization.serialize(((), {})).to_blob()
_RECEIVE_EVERY_NS = 1_000_000
_MAX_BOUNCED = 4096


def _exit_type():
    from p2pcompute.actor import _ExitActor
    return _ExitActor


def _ready():
    return True  # the actor's constructor has run: this call could not have started otherwise


def _terminate():
    from p2pcompute.actor import exit_actor
    exit_actor()
_NONE_RETURNS = [result_to_wire(InlineResult(serialization.serialize(None).to_blob(), []))]


def _om():
    from p2pcompute.ownership import messages
    return messages


def _proc_of(msg: rm.PushTask) -> str:
    """The owner's process id: return ids are '<owner>.<n>'."""
    if msg.return_ids:
        return msg.return_ids[0].split(".", 1)[0]
    return msg.task_id.split(".", 1)[0]


def _user_traceback(exc: BaseException) -> str:
    """The traceback without the worker's own frames, which would only confuse the user."""
    import traceback
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _dump_state(client: WorkerClient, executor: Executor) -> None:
    import json
    from p2pcompute.runtime.introspect import debug_state
    state = debug_state(client)
    state["running"] = executor.running
    state["queued"] = [m.task_id for m in executor.queue]
    sys.__stderr__.write("p2pcompute state: " + json.dumps(state, default=str) + "\n")
    sys.__stderr__.flush()


def _die_with_parent() -> None:
    """Ask Linux to kill us when the peer that started us dies, so no worker is ever orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pcompute-worker")
    parser.add_argument("--peer", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--sock-dir", required=True)
    parser.add_argument("--tcp-host", default=None)
    parser.add_argument("--advertise-host", default=None)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--gpu-ids", default="")
    args = parser.parse_args(argv)
    if args.gpu_ids:
        # Started for a GPU lease: its GPUs are set before any user code can import a CUDA library.
        gpus.set_visible(args.gpu_ids.split(","))
    _die_with_parent()
    if args.parent_pid and os.getppid() != args.parent_pid:
        return 1  # the peer died before we could ask to die with it
    # Our own log goes to the worker's log file; the root logger is left to user code, whose output (through
    # sys.stderr, replaced below) reaches the driver.
    own = logging.getLogger("p2pcompute")
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(logging.Formatter(f"%(asctime)s worker {args.worker_id} %(levelname)s %(name)s: "
                                           f"%(message)s"))
    own.addHandler(handler)
    own.setLevel(os.environ.get("P2P_LOG_LEVEL", "WARNING"))
    own.propagate = False
    token = os.environ.pop("P2P_CLUSTER_TOKEN", None)
    ctx = Context(CurveKeys.from_token(token) if token and args.tcp_host else None)
    client = WorkerClient(ctx, proc_id=args.worker_id, kind="worker", job_id="", job_env={}, peer_addr=args.peer,
                          sock_dir=args.sock_dir, tcp_host=args.tcp_host, advertise_host=args.advertise_host,
                          worker_id=args.worker_id)
    tasks = Transport(ctx, args.worker_id, "t", ipc_path=os.path.join(args.sock_dir, f"{args.worker_id}t"),
                      tcp_host=args.tcp_host, advertise_host=args.advertise_host)
    executor = Executor(client, tasks, args.node_id)
    executor.gpu_dir = args.sock_dir
    client.executor = executor
    executor.env_cache_dir = os.path.join(args.sock_dir, "runtime_envs")
    from p2pcompute.runtime import task_events
    task_events.install(client)
    signal.signal(signal.SIGUSR1, executor.on_interrupt)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # Operators (and developers) can ask any worker what it is doing: kill -USR2 <pid> writes to its log.
    signal.signal(signal.SIGUSR2, lambda *_: _dump_state(client, executor))
    runtime_context.install_worker(client, executor, _current)
    from p2pcompute import api
    api._attach_worker_runtime(client)
    sys.stdout = output.LineForwarder(client.output, "stdout", sys.__stdout__, client.waker.wake)
    sys.stderr = output.LineForwarder(client.output, "stderr", sys.__stderr__, client.waker.wake)
    client.start()
    tasks.send(args.peer, codec.encode(rm.RegisterWorker(args.worker_id, os.getpid(), tasks.address, client.addr)))
    executor.run()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

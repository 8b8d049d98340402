"""Task events: what each process knows about the tasks it ran, runs and owns.

Theory of operation. There is no central task table. Three kinds of processes each know part of a task's life:

- its **owner** (driver or worker that called `.remote()`) knows it from submission until it finishes:
  waiting for arguments, waiting for a lease, pushed to a worker;
- the **worker** that runs it knows when it arrived, when its arguments were read, when the user code
  ended and when the reply left — and, if it failed, the traceback;
- the worker's **peer** keeps the finished attempts its workers report (`TaskEvents`, batched, at most a
  quarter of a second late), so history outlives the worker process; until the batch leaves, the worker
  reports those attempts itself (`finished` in its answer), so no finished task drops out of sight.

A state request (see `state_reports.py`) asks each peer for the events it keeps and each local process for
what it knows now (`ProcStateRequest`, answered on the process's I/O thread by `answer`). `util.state`
merges the answers by task id; a later stage wins (finished over running over pending).

Recording costs a few clock reads and a dict per task on the worker's main thread; events travel to the
peer in batches, off the task reply path.
"""

from __future__ import annotations

import os
import threading
import time

from p2pcompute.net import codec
from p2pcompute.ownership.wire_values import is_error
from p2pcompute.runtime import messages as rm

# P2P_TASK_EVENTS=0 turns recording off (no history, no timeline; pending and running tasks still show).
ENABLED = os.environ.get("P2P_TASK_EVENTS", "1") != "0"
FLUSH_EVERY_NS = 250_000_000
FLUSH_BATCH = 256
_OPEN_MAX = 10_000


def _owner_of(task_id: str) -> str:
    """Task ids are '<owner process>.<n>'."""
    return task_id.rsplit(".", 1)[0]


class TaskEventLog:
    """Worker side: timestamps of each attempt, sent to the peer in batches (main thread flushes)."""

    def __init__(self, worker_id: str, node_id: str):
        self.worker_id = worker_id
        self.node_id = node_id
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._recv: dict[str, int] = {}
        self._open: dict[str, dict] = {}
        self._done: list[dict] = []
        self._last_flush_ns = time.monotonic_ns()
        self.current: dict | None = None   # the task the main thread runs now (read racily by the I/O thread)

    @property
    def pending(self) -> bool:
        return bool(self._done)

    def received(self, task_id: str) -> None:
        if ENABLED and len(self._recv) < _OPEN_MAX:
            self._recv[task_id] = time.time_ns()

    def begin(self, msg) -> None:
        if not ENABLED:
            return
        now = time.time_ns()
        ev = {"task_id": msg.task_id, "name": msg.name, "kind": msg.kind, "job_id": msg.job_id,
              "owner": _owner_of(msg.task_id), "worker_id": self.worker_id, "node_id": self.node_id,
              "pid": self.pid, "actor_id": msg.actor_id, "method": msg.method,
              "recv_ns": self._recv.pop(msg.task_id, now), "start_ns": now, "args_ns": 0, "exec_ns": 0,
              "end_ns": 0, "state": "RUNNING", "error": None, "error_type": None}
        with self._lock:
            if len(self._open) < _OPEN_MAX:
                self._open[msg.task_id] = ev
        self.current = ev

    def args_done(self, task_id: str) -> None:
        ev = self._open.get(task_id)
        if ev is not None and not ev["args_ns"]:
            ev["args_ns"] = time.time_ns()

    def exec_done(self, task_id: str) -> None:
        ev = self._open.get(task_id)
        if ev is not None and not ev["exec_ns"]:
            ev["exec_ns"] = time.time_ns()

    def failed(self, task_id: str, error_type: str, traceback_text: str) -> None:
        ev = self._open.get(task_id)
        if ev is not None:
            ev["error_type"] = error_type
            ev["error"] = traceback_text[-8000:]

    def end(self, task_id: str, returns: list | None, system_error: str | None = None) -> None:
        """The reply leaves: the attempt is over. Called from any thread."""
        now = time.time_ns()
        with self._lock:
            ev = self._open.pop(task_id, None)
            if ev is None:
                return
            ev["end_ns"] = now
            ev["args_ns"] = ev["args_ns"] or ev["start_ns"]
            ev["exec_ns"] = ev["exec_ns"] or now
            failed = system_error is not None or any(is_error(r) for r in returns or ())
            ev["state"] = "FAILED" if failed else "FINISHED"
            if system_error is not None and not ev["error"]:
                ev["error"], ev["error_type"] = system_error, "SystemError"
            self._done.append(ev)
        if self.current is ev:
            self.current = None

    def flush_if_due(self, send, force: bool = False) -> None:
        """Main thread: hand finished attempts to the peer when enough wait or they waited long enough."""
        if not self._done:
            return
        now = time.monotonic_ns()
        if not force and len(self._done) < FLUSH_BATCH and now - self._last_flush_ns < FLUSH_EVERY_NS:
            return
        with self._lock:
            batch, self._done = self._done, []
        self._last_flush_ns = now
        send(codec.encode(rm.TaskEvents(self.worker_id, batch)))

    def snapshot(self) -> list[dict]:
        """Attempts started and not yet replied to (running, or waiting in an actor's pool)."""
        with self._lock:
            return [dict(ev) for ev in self._open.values()]

    def unsent(self) -> list[dict]:
        """Attempts over but not yet handed to the peer: between the reply and the next flush a task is
        neither owned (its owner has the result) nor kept by the peer, and a report must still show it."""
        with self._lock:
            return [dict(ev) for ev in self._done]


# ---- the process's part of a state report (I/O thread) --------------------------------------------------

def _pending_state(rec) -> str:
    if rec.deps_left > 0 or not rec.scheduled:
        return "PENDING_ARGS_AVAIL"
    if rec.held is None:
        return "PENDING_NODE_ASSIGNMENT"
    return "SUBMITTED_TO_WORKER"


def owned_tasks(rt) -> list[dict]:
    out = []
    for rec in list(rt.tasks.values()):
        if rec.done:
            continue
        out.append({"task_id": rec.task_id, "name": rec.name, "kind": rec.kind, "job_id": rt.job_id,
                    "owner": rt.proc_id, "state": _pending_state(rec), "actor_id": rec.actor_id,
                    "method": rec.method, "worker_id": rec.held.worker_id if rec.held is not None else None})
    return out


def owned_actors(rt) -> list[dict]:
    out = []
    owned_map = getattr(getattr(rt, "actors", None), "owned", None) or {}
    for owned in list(owned_map.values()):
        # Read defensively: the owner's actor records belong to the actor core, which may grow or rename.
        raw = str(getattr(owned, "state", "pending"))
        state = "DEAD" if getattr(owned, "killed", False) and raw != "alive" else raw.upper()
        if state == "PENDING":
            state = "PENDING_CREATION"
        key = getattr(owned, "name_key", None)   # "namespace/name" when the actor was named
        held = getattr(owned, "held", None)
        out.append({"actor_id": owned.actor_id, "class_name": getattr(owned, "name", ""), "state": state,
                    "name": key.split("/", 1)[-1] if isinstance(key, str) else None,
                    "namespace": key.split("/", 1)[0] if isinstance(key, str) and "/" in key else None,
                    "owner": rt.proc_id, "job_id": rt.job_id, "detached": getattr(owned, "detached", False),
                    "restarts": max(0, getattr(owned, "incarnation", 0) - 1),
                    "restarts_left": getattr(owned, "restarts_left", 0),
                    "worker_id": getattr(held, "worker_id", None) if held is not None else None})
    return out


def answer(rt, msg) -> None:
    """Handler of `ProcStateRequest` on a client's I/O thread."""
    what = msg.what
    data: dict = {"kind": rt.kind, "pid": os.getpid(), "job_id": rt.job_id}
    if what == "tasks":
        data["owned"] = owned_tasks(rt)
        events = getattr(rt, "task_events", None)
        if events is not None:
            data["running"] = events.snapshot()
            data["finished"] = events.unsent()
            ex = getattr(rt, "executor", None)
            if ex is not None:
                data["queued"] = [{"task_id": m.task_id, "name": m.name, "kind": m.kind, "job_id": m.job_id,
                                   "owner": _owner_of(m.task_id), "actor_id": m.actor_id, "method": m.method}
                                  for m in list(ex.queue)]
    elif what == "actors":
        data["owned"] = owned_actors(rt)
        ex = getattr(rt, "executor", None)
        if ex is not None and ex.actor_id:
            data["hosted"] = {"actor_id": ex.actor_id, "class_name": ex.actor_name, "pid": os.getpid(),
                              "worker_id": rt.proc_id, "alive": ex.actor is not None}
    elif what == "metrics":
        from p2pcompute.util import metrics
        data["metrics"] = metrics.snapshot()
        pending: dict[str, int] = {}
        for rec in list(rt.tasks.values()):
            if not rec.done:
                state = _pending_state(rec)
                pending[state] = pending.get(state, 0) + 1
        data["owned_pending"] = pending
        ex = getattr(rt, "executor", None)
        data["worker_queue"] = len(ex.queue) if ex is not None else 0
    rt.send(msg.reply_to, rm.ProcStateReply(msg.request_id, rt.proc_id, data))


def _on_rpc_reply(rt, msg) -> None:
    rt.answer_request(msg)


def install(rt) -> None:
    """Let a client answer state requests and receive state replies (through its extra handlers)."""
    rt.handlers[rm.ProcStateRequest] = lambda msg: answer(rt, msg)
    rt.handlers[rm.StateReply] = lambda msg: _on_rpc_reply(rt, msg)

"""A simulated driver that runs the product's owner core (`p2pcompute/ownership/owner.py`).

Every driver of every workload is one of these: it hands every event to the real `OwnerCore` — the same
object `runtime/client.py` drives — and carries out its effects on the simulated network. So the
submitter's leases, retries after a worker's or a peer's death, the directory of objects, reference
counting, frees, lineage rebuilds of lost copies, and the actor machines (creation, restarts up to
`max_restarts`, per-caller order, `max_task_retries`) all run here exactly as in a real process.

As the client does, it feeds the core messages (`on_message`), ticks (every 100 ms while the submitter has
keys) and deaths (`ProcessDied`, which the peer relays from membership and from other peers), and carries out
`Send` and `Timer` effects. What a user program does — submit, put, hold and drop refs, create and call
actors — is the workload's, through `submit`, `put`, `apply` and `RefOps` (`workloads/core_refs.py`).

The core is observed, not changed: `observed(core_class)` is a subclass whose only additions report each
`Free` it carries out (so the reference checks see every free) and each task's end before the core
releases its arguments; the driver reports the pushes it
sends, the replies it receives and the `TaskFinished` effects to the workload and the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pcompute import serialization
from p2pcompute.net.effects import Send, Timer
from p2pcompute.ownership import task_messages as tm
from p2pcompute.ownership.directory import INLINE
from p2pcompute.ownership.owner import ForgetAddress, OwnerCore, TaskFinished
from p2pcompute.ownership.task_record import TaskRecord

NEVER = 1 << 62
_TICK_NS = 100_000_000  # the runtime client's tick
MAX_RETRIES = 3  # the API's default


@dataclass(slots=True)
class SimTask:
    """A task of the `tasks` workload: its id, scheduling key, shape, service time and ledger record."""

    task_id: str
    key: tuple
    shape: dict
    service_ns: int
    record: object


_OBSERVED: dict = {}


def observed(core_class: type) -> type:
    """`core_class` (OwnerCore or a planted-bug subclass) that tells its driver of every free it carries out."""
    cls = _OBSERVED.get(core_class)
    if cls is None:
        def _on_free(self, object_id: str) -> None:
            self.sim_driver.workload.on_free(self.sim_driver, object_id)
            core_class._on_free(self, object_id)

        def _complete(self, rec, error=None) -> None:
            # Before the core releases the task's arguments (its TaskFinished effect comes out later).
            self.sim_driver.workload.on_task_ending(self.sim_driver, rec.task_id)
            core_class._complete(self, rec, error)

        cls = _OBSERVED[core_class] = type(f"Observed{core_class.__name__}", (core_class,),
                                           {"_on_free": _on_free, "_complete": _complete})
    return cls


class OwnerDriver:
    def __init__(self, peer, index: int, core_class: type = OwnerCore, table_class: type | None = None) -> None:
        self.peer = peer
        self.cluster = peer.cluster
        # Unique per incarnation, as the runtime's random suffix makes it: a peer restarted with its old id
        # (--restart-id same) must not reuse its old drivers' ids (their objects' ids would collide).
        self.proc_id = f"{peer.peer_id}-d{index}" + (f"i{peer.gen}" if peer.gen else "")
        self.addr = f"sim://{self.proc_id}~{peer.key}"
        self.ep = peer.net.register(self.addr, peer, self.on_message)
        self.job_id = f"job-{self.proc_id}"
        self.core = observed(core_class)(self.proc_id, self.addr, self.job_id, {}, peer.addr)
        self.core.sim_driver = self
        if table_class is not None:  # --break refcount: the planted-bug reference table
            self.core.refs = table_class(self.proc_id, self.addr)
        self.core.node_id = peer.peer_id
        self.core.report_finished = True
        self.sub = self.core.submitter
        self.sub.peers_that_fit = max(1, len(self.cluster.up))
        self.records: dict = {}  # task id -> the ledger's record, until the task ends
        self.alive = True
        self.state: dict = {}  # the workload's
        self.told_dead: set[str] = set()  # process ids, and "<peer id>-" prefixes, this process was told died
        self.refs = None  # the core's reference table, once RefOps has registered this process
        self._tick_at = NEVER
        peer.drivers.append(self)

    def new_id(self) -> str:
        return self.core.new_id()

    @property
    def workload(self):
        return self.cluster.workload

    # ---- what the user does -------------------------------------------------------------------------

    def submit(self, rec: TaskRecord, record=None) -> None:
        """Submit a task (`rec`, as the API builds it); `record` is its ledger entry, if it has one."""
        if record is not None:
            self.records[rec.task_id] = record
        self._run(self.core.submit(self.peer.local(), rec))

    def submit_task(self, task: SimTask) -> None:
        """A task of the `tasks` workload: no ref arguments, no return objects (what it computes is its time)."""
        fn = task.key[1] if isinstance(task.key, tuple) and len(task.key) > 1 else "sim"
        rec = TaskRecord(task.task_id, "task", "tasks", f"sim-{fn}", None, None, None, [], [], [], dict(task.shape),
                         {"max_retries": MAX_RETRIES, "wire": {"service_ns": task.service_ns}}, MAX_RETRIES)
        self.submit(rec, task.record)

    def put(self, object_id: str, contained: list = ()) -> None:
        """`put`: the value goes in the directory; the local ref is the caller's (RefOps.create)."""
        self.core.objects.resolve(object_id, INLINE, data=b"", size=0, contained=list(contained))
        self._run(self.core.run(self.peer.local(), self.core.on_put, object_id, list(contained), None))

    def apply(self, effects: list) -> None:
        """Effects of the core's parts (the reference table, the actor core), handed to the core as the
        client's effect runner does."""
        if effects:
            self._run(self.core.run(self.peer.local(), self.core.apply, effects))

    # ---- inputs -------------------------------------------------------------------------------------

    def on_message(self, src: str, msg) -> None:
        if not self.alive:
            return
        if self.core.handles(msg):
            if type(msg) is tm.TaskReply:
                self.workload.on_reply(self, msg)
            # The runtime's transport names the sending process (its id), not its address.
            self._run(self.core.on_message(self.peer.local(), src[6:].split("~", 1)[0], msg))
        else:
            self.workload.on_driver_message(self, src, msg)

    def on_peer_died(self, peer_id: str, addr: str) -> None:
        self.told_dead.add(peer_id + "-")
        self._run(self.core.on_message(self.peer.local(), self.peer.addr,
                                       tm.ProcessDied(peer_id, "peer", "peer died", addr, "")))
        self.workload.on_driver_saw_death(self, peer_id + "-")

    def on_process_died(self, proc_id: str, kind: str) -> None:
        self.told_dead.add(proc_id)
        self._run(self.core.on_message(self.peer.local(), self.peer.addr,
                                       tm.ProcessDied(proc_id, kind, "process died", "", "")))
        self.workload.on_driver_saw_death(self, proc_id)

    def die(self) -> None:
        if self.alive:
            self.alive = False
            now, ledger = self.peer.engine.now, self.cluster.ledger
            for record in self.records.values():
                ledger.fail(record, "OwnerDiedError", now)
            self.records.clear()
            self.workload.on_process_gone(self)

    # ---- effects ------------------------------------------------------------------------------------

    def _run(self, effects: list) -> None:
        send, ep = self.peer.net.send, self.ep
        for e in effects:
            t = type(e)
            if t is Send:
                msg = e.msg
                if type(msg) is tm.PushTask:
                    self._pushed(msg, e.to)
                send(ep, e.to, msg)
            elif t is Timer:
                self._timer(self.peer.to_global(e.at_ns))
            elif t is TaskFinished:
                self._finished(e)
            elif t is ForgetAddress:
                pass  # the simulated network keeps no connections
            # ReleaseName: no actor here has a name.
        if self._tick_at == NEVER and self.sub.keys and self.alive:
            self._timer(self.peer.engine.now + _TICK_NS)

    def _pushed(self, msg: tm.PushTask, to: str) -> None:
        record = self.records.get(msg.task_id)
        if record is not None:
            if record.where:
                record.attempts += 1  # pushed again: a retry, or a rebuild, run by the core
            record.where = to[6:].split("~", 1)[0]
        self.workload.on_push(self, msg, to)

    def _finished(self, e: TaskFinished) -> None:
        error = None if e.error is None else type(serialization.error_from_bytes(e.error)).__name__
        record = self.records.pop(e.task_id, None)
        if record is not None:
            now = self.peer.engine.now
            if error is None:
                self.cluster.ledger.finish(record, now)
            else:
                self.cluster.ledger.fail(record, error, now)
        self.workload.on_task_finished(self, e.task_id, error)

    def _timer(self, at: int) -> None:
        if at < self._tick_at:
            self._tick_at = at
            self.peer.engine.at(at, self.peer._run_later, self._tick, at)

    def _tick(self, at: int) -> None:
        if not self.alive or at != self._tick_at:
            return
        self._tick_at = NEVER
        self._run(self.core.on_tick(self.peer.local()))

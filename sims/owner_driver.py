"""A simulated driver that runs the product's owner core (`p2pcompute/ownership/owner.py`).

Where `sims/driver.py` models a submitter's side in its own code, this driver hands every event to the real
`OwnerCore` — the same object `runtime/client.py` drives — and carries out its effects on the simulated
network: so retries after a worker's or a peer's death, the submitter's leases and the directory run here
exactly as in a real process. The `tasks` workload uses it.

It keeps the shape the simulated peer and the workloads expect of a driver (`proc_id`, `addr`, `ep`,
`alive`, `sub`, `state`, `submit`, `on_message`, `on_peer_died`, `on_process_died`, `die`), and keeps the
cluster's ledger from the core's `TaskFinished` effects and the pushes it sends (attempts, last worker).
"""

from __future__ import annotations

from p2pcompute import serialization
from p2pcompute.net.effects import Send, Timer
from p2pcompute.ownership import task_messages as tm
from p2pcompute.ownership.owner import ForgetAddress, OwnerCore, TaskFinished
from p2pcompute.ownership.task_record import TaskRecord

NEVER = 1 << 62
_TICK_NS = 100_000_000  # the runtime client's tick
MAX_RETRIES = 3  # the API's default


class OwnerDriver:
    def __init__(self, peer, index: int) -> None:
        self.peer = peer
        self.cluster = peer.cluster
        # Unique per incarnation, as the runtime's random suffix makes it (see sims/driver.py).
        self.proc_id = f"{peer.peer_id}-d{index}" + (f"i{peer.gen}" if peer.gen else "")
        self.addr = f"sim://{self.proc_id}~{peer.key}"
        self.ep = peer.net.register(self.addr, peer, self.on_message)
        self.job_id = f"job-{self.proc_id}"
        self.core = OwnerCore(self.proc_id, self.addr, self.job_id, {}, peer.addr)
        self.core.node_id = peer.peer_id
        self.core.report_finished = True
        self.sub = self.core.submitter
        self.sub.peers_that_fit = max(1, len(self.cluster.up))
        self.records: dict = {}  # task id -> the ledger's record, until the task ends
        self.alive = True
        self.state: dict = {}
        self.told_dead: set[str] = set()
        self.refs = None
        self._tick_at = NEVER
        peer.drivers.append(self)

    def new_id(self, prefix: str = "t") -> str:
        return self.core.new_id()

    # ---- inputs -------------------------------------------------------------------------------------

    def submit(self, task) -> None:
        """`task` is the workload's `SimTask`: its id, key, shape, service time and ledger record."""
        fn = task.key[1] if isinstance(task.key, tuple) and len(task.key) > 1 else "sim"
        # No return objects: what a task of this workload computes is its time, kept in the ledger.
        rec = TaskRecord(task.task_id, "task", str(fn), f"sim-{fn}", None, None, None, [], [], [], dict(task.shape),
                         {"max_retries": MAX_RETRIES, "wire": {"service_ns": task.service_ns}}, MAX_RETRIES)
        self.records[task.task_id] = task.record
        self._run(self.core.submit(self.peer.local(), rec))

    def on_message(self, src: str, msg) -> None:
        if not self.alive:
            return
        if self.core.handles(msg):
            self._run(self.core.on_message(self.peer.local(), src, msg))

    def on_peer_died(self, peer_id: str, addr: str) -> None:
        self.told_dead.add(peer_id + "-")
        self._run(self.core.on_message(self.peer.local(), self.peer.addr,
                                       tm.ProcessDied(peer_id, "peer", "peer died", addr, "")))
        self.cluster.workload.on_driver_saw_death(self, peer_id + "-")

    def on_process_died(self, proc_id: str, kind: str) -> None:
        self.told_dead.add(proc_id)
        self._run(self.core.on_message(self.peer.local(), self.peer.addr,
                                       tm.ProcessDied(proc_id, kind, "process died", "", "")))
        self.cluster.workload.on_driver_saw_death(self, proc_id)

    def die(self) -> None:
        if self.alive:
            self.alive = False
            now, ledger = self.peer.engine.now, self.cluster.ledger
            for record in self.records.values():
                ledger.fail(record, "OwnerDiedError", now)
            self.records.clear()
            self.cluster.workload.on_process_gone(self)

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
        if self._tick_at == NEVER and self.sub.keys and self.alive:
            self._timer(self.peer.engine.now + _TICK_NS)

    def _pushed(self, msg: tm.PushTask, to: str) -> None:
        record = self.records.get(msg.task_id)
        if record is None:
            return
        if record.where:
            record.attempts += 1  # pushed again: a retry, run by the core
        record.where = to[6:].split("~", 1)[0]

    def _finished(self, e: TaskFinished) -> None:
        record = self.records.pop(e.task_id, None)
        if record is None:
            return
        now = self.peer.engine.now
        if e.error is None:
            self.cluster.ledger.finish(record, now)
        else:
            self.cluster.ledger.fail(record, type(serialization.error_from_bytes(e.error)).__name__, now)

    def _timer(self, at: int) -> None:
        if at < self._tick_at:
            self._tick_at = at
            self.peer.engine.at(at, self.peer._run_later, self._tick, at)

    def _tick(self, at: int) -> None:
        if not self.alive or at != self._tick_at:
            return
        self._tick_at = NEVER
        self._run(self.core.on_tick(self.peer.local()))

"""A simulated client process (a driver): the real `SubmitterCore`, driven the way `runtime/client.py` does.

Tasks wait in the submitter core until it has a lease for their key, then its `Push` effects send them
(`PushTask`) straight to the leased worker; the worker's `TaskReply` completes them (`on_task_done`). A lease
revoked or a peer declared dead hands back the tasks that were in flight there, and each is retried up to
`max_retries` (3, the API's default) — at least once — or fails with `WorkerCrashedError`, as in
`client._lost_tasks`. A driver that dies takes its tasks with it: they end with `OwnerDiedError`.

Deaths reach the driver from its own peer (membership), as `ProcessDied` does in the runtime. Everything
workload-specific — what a task carries, what its result means, references, actors, table clients — is in
the workload's hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pcompute.lease.messages import LeaseRevoked
from p2pcompute.lease.submitter import ActorPlaced, Push, SubmitterCore, TaskInfo
from p2pcompute.net.effects import Send, Timer
from p2pcompute.ownership.refcount import Free
from p2pcompute.ownership import task_messages as rm
from sims.invariants import TaskRecord

NEVER = 1 << 62
_TICK_NS = 100_000_000  # the runtime client's tick
MAX_RETRIES = 3


@dataclass(slots=True)
class SimTask:
    task_id: str
    key: tuple
    shape: dict
    service_ns: int
    record: TaskRecord
    kind: str = "task"  # "task" | "actor_create" | "actor_call"
    refs: list = field(default_factory=list)  # [[object id, owner addr], ...] nested in the arguments
    return_ids: list = field(default_factory=list)
    retries: int = MAX_RETRIES
    payload: object = None  # the workload's
    done: bool = False
    actor_id: str | None = None
    method: str | None = None
    seq: int = 0


class Driver:
    def __init__(self, peer, index: int) -> None:
        self.peer = peer
        self.cluster = peer.cluster
        # Unique per incarnation, as the runtime's random suffix makes it: a peer restarted with its old id
        # (--restart-id same) must not reuse its old drivers' ids (their objects' ids would collide).
        self.proc_id = f"{peer.peer_id}-d{index}" + (f"i{peer.gen}" if peer.gen else "")
        self.addr = f"sim://{self.proc_id}~{peer.key}"
        self.ep = peer.net.register(self.addr, peer, self.on_message)
        self.job_id = f"job-{self.proc_id}"
        self.sub = SubmitterCore(self.proc_id, self.addr, self.job_id, peer.addr)
        self.sub.peers_that_fit = max(1, len(self.cluster.up))
        self.tasks: dict[str, SimTask] = {}
        self.refs = None  # a ReferenceTable, for the dag workload
        self.told_dead: set[str] = set()  # process ids, and "<peer id>-" prefixes, this process was told died
        self.alive = True
        self.state: dict = {}  # the workload's
        self._tick_at = NEVER
        self._n = 0
        peer.drivers.append(self)

    def new_id(self, prefix: str = "t") -> str:
        self._n += 1
        return f"{self.proc_id}.{prefix}{self._n}"

    # ---- submitting ---------------------------------------------------------------------------------

    def submit(self, task: SimTask) -> None:
        self.tasks[task.task_id] = task
        self._run(self.sub.submit(self.peer.local(), self._info(task)))

    @staticmethod
    def _info(task: SimTask) -> TaskInfo:
        return TaskInfo(task.task_id, task.key, task.shape, actor=task.kind == "actor_create")

    def _run(self, effects: list) -> None:
        send, ep = self.peer.net.send, self.ep
        for e in effects:
            t = type(e)
            if t is Send:
                send(ep, e.to, e.msg)
            elif t is Push:
                self._push(e.task_id, e.lease)
            elif t is Timer:
                self._timer(self.peer.to_global(e.at_ns))
            elif t is Free:
                self.cluster.workload.on_free(self, e.object_id)
            elif t is ActorPlaced:
                self.cluster.workload.on_actor_placed(self, e.task_id, e.lease)
        if self._tick_at == NEVER and self.sub.keys and self.alive:
            self._timer(self.peer.engine.now + _TICK_NS)

    def run_refs(self, effects: list) -> None:
        """Carry out a ReferenceTable's effects (Send, Free)."""
        if effects:
            self._run(effects)

    def _timer(self, at: int) -> None:
        if at < self._tick_at:
            self._tick_at = at
            self.peer.engine.at(at, self.peer._run_later, self._tick, at)

    def _tick(self, at: int) -> None:
        if not self.alive or at != self._tick_at:
            return
        self._tick_at = NEVER
        self._run(self.sub.on_tick(self.peer.local()))

    def push_message(self, task: SimTask, worker_addr: str) -> rm.PushTask:
        wl = self.state.get("wl")
        return rm.PushTask(task.task_id, task.kind, wl.name if wl else "sim", self.job_id, "sim-fn", None, None, None, None, [],
                           task.refs, task.return_ids, self.addr, task.actor_id, task.method, task.seq,
                           {"service_ns": task.service_ns})

    def _push(self, task_id: str, held) -> None:
        task = self.tasks.get(task_id)
        if task is None or task.done:
            self._run(self.sub.on_task_done(self.peer.local(), task_id))
            return
        task.record.where = held.worker_id
        self.cluster.workload.before_push(self, task, held.worker_addr)
        self.peer.net.send(self.ep, held.worker_addr, self.push_message(task, held.worker_addr))

    # ---- replies and deaths -------------------------------------------------------------------------

    def on_message(self, src: str, msg) -> None:
        if not self.alive:
            return
        t = type(msg)
        if t is rm.TaskReply:
            self._on_reply(msg)
        elif t is LeaseRevoked:
            lost, effects = self.sub.on_revoked(self.peer.local(), msg.lease_id)
            self._run(effects)
            self.lost(lost, f"its worker died ({msg.reason})")
        elif 100 <= msg.TYPE < 200:
            self._run(self.sub.on_message(self.peer.local(), src, msg))
        else:
            self.cluster.workload.on_driver_message(self, src, msg)

    def _on_reply(self, msg: rm.TaskReply) -> None:
        task = self.tasks.get(msg.task_id)
        if task is None or task.done:
            # As the client: a late answer of another attempt may still free the worker it ran on.
            self._run(self.sub.on_task_done(self.peer.local(), msg.task_id, 0, msg.worker_id))
            self.cluster.workload.on_stale_reply(self, msg)
            return
        if task.kind == "task":
            self._run(self.sub.on_task_done(self.peer.local(), task.task_id, msg.exec_ns, msg.worker_id))
        self.complete(task, msg)

    def complete(self, task: SimTask, msg) -> None:
        task.done = True
        self.tasks.pop(task.task_id, None)
        self.cluster.ledger.finish(task.record, self.peer.engine.now)
        self.cluster.workload.on_task_done(self, task, msg)

    def fail(self, task: SimTask, error: str) -> None:
        task.done = True
        self.tasks.pop(task.task_id, None)
        if task.kind == "task":
            self.sub.forget_task(task.task_id)
        self.cluster.ledger.fail(task.record, error, self.peer.engine.now)
        self.cluster.workload.on_task_failed(self, task, error)

    def lost(self, task_ids: list[str], why: str) -> None:
        """Tasks whose worker died with them: retry (at least once), or fail when out of retries."""
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if task is None or task.done:
                continue
            if task.retries > 0:
                task.retries -= 1
                task.record.attempts += 1
                self.sub.forget_task(task_id)
                self.cluster.workload.on_retry(self, task)
                self._run(self.sub.submit(self.peer.local(), self._info(task)))
            else:
                self.fail(task, "WorkerCrashedError")

    def on_peer_died(self, peer_id: str, addr: str) -> None:
        self.told_dead.add(peer_id + "-")
        if self.refs is not None:
            self.run_refs(self.refs.on_peer_died(peer_id))
        lost, effects = self.sub.on_peer_died(self.peer.local(), peer_id, addr)
        self._run(effects)
        self.lost(lost, f"its peer {peer_id} died")
        self.cluster.workload.on_driver_saw_death(self, peer_id + "-")

    def on_process_died(self, proc_id: str, kind: str) -> None:
        self.told_dead.add(proc_id)
        if self.refs is not None:
            self.run_refs(self.refs.on_process_died(proc_id))
        lost, effects = self.sub.on_worker_died(self.peer.local(), proc_id)
        self._run(effects)
        self.lost(lost, f"its worker process died")
        self.cluster.workload.on_driver_saw_death(self, proc_id)

    def die(self) -> None:
        if self.alive:
            self.alive = False
            now, ledger = self.peer.engine.now, self.cluster.ledger
            for task in self.tasks.values():
                ledger.fail(task.record, "OwnerDiedError", now)
            self.cluster.workload.on_process_gone(self)

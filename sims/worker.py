"""A simulated worker process: runs pushed tasks one at a time for a sampled (virtual) service time.

A worker receives `PushTask` from whoever holds its lease, queues it, "runs" it for the task's service time
(carried in `options["service_ns"]`, drawn when the task was submitted) and sends a `TaskReply` to the
task's owner. It executes nothing: what the task does to references (borrow its arguments, keep some, return
some inside its result) is decided by the workload's hooks, `on_task_start` and `on_task_end`, which model
the runtime's worker. An actor's worker is the same, running its calls in arrival order.

It dies with its peer (crash), on `StopWorker`, or alone (the `kill` fault); whatever it was running is
lost, and the owner learns of it through the lease core (`LeaseRevoked`) or membership.
"""

from __future__ import annotations

from collections import deque

from p2pcompute.ownership import task_messages as rm


class SimWorker:
    __slots__ = ("peer", "worker_id", "addr", "ep", "alive", "queue", "running", "refs", "kept", "state",
                 "told_dead")

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
        self.refs = None  # a ReferenceTable, created by the dag workload when it first needs one
        self.kept: dict = {}  # workload state: refs this process holds past a task (object id -> count)
        self.state: dict = {}  # workload state: an actor's state
        self.told_dead: set[str] = set()  # process ids and "<peer id>-" prefixes it was told died

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
        msg = self.queue.popleft()
        self.running = msg
        self.peer.cluster.workload.on_task_start(self, msg)
        self.peer.later(msg.options.get("service_ns", 0), self._finish, msg)

    def _finish(self, msg: rm.PushTask) -> None:
        if not self.alive or self.running is not msg:
            return
        peer = self.peer
        returns = peer.cluster.workload.on_task_end(self, msg)
        if self.alive:
            peer.net.send(self.ep, msg.owner_addr, rm.TaskReply(msg.task_id, returns, msg.options.get("service_ns", 0),
                                                                 self.worker_id, peer.peer_id, None))
        self.running = None
        if self.queue and self.alive:
            self._start_next()

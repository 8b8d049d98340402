"""The submitter core: a process's queue of ready tasks, the leases it holds, and what to push where.

Theory of operation
-------------------
Tasks wait here, grouped by *scheduling key* (resource shape, function, where their large arguments live),
until a lease for their key is granted; then they are pushed straight to the leased worker. A submitter that
has a million tasks keeps them itself: it asks for more leases only while its queue outgrows the pipelines
of the leases it holds, and never has more requests in flight per key than `max_pending_requests`, so no
peer's memory grows with someone else's backlog.

A lease is reused for the same key while tasks remain (up to `pipeline_depth` pushed at once, adapted to
how long tasks take), then kept `lease_linger_ms` in case more arrive — a tight `get(f.remote())` loop then
pays for one lease, not one per call — and returned. A peer that has waiting requests sends `LeaseWanted`;
the lease then goes back as soon as it is idle, and a lease older than `lease_reuse_ms` is returned after its
current tasks so others get their turn.

The first request for a key goes to the peer holding most bytes of its arguments, else the local peer;
a spillback sends it (once) to the named peers — all of them at once, as one group: the first grant cancels
the others, and counts as the one lease the group asked for; a rejection or a spilled target that vanished
retries at the local peer after a short backoff (unless a sibling still waits).

Pure: no I/O. Effects: `Send`, `Timer`, `Push` (the runtime sends the task), `Granted`/`Released`
(observability, actor placement).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from p2pcompute.lease.messages import (CancelLeaseRequest, LeaseGranted, LeaseRejected, LeaseRevoked,
                                       LeaseSpillback, LeaseWanted, RequestLease, ReturnLease)
from p2pcompute.net.effects import Send, Timer


@dataclass(frozen=True, slots=True)
class TasksLost:
    """Effect: these tasks were in flight on a lease whose worker (or its peer) died. The owner retries
    each or fails it; `why` says what died, for the error."""

    task_ids: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class SubmitterConfig:
    # An idle lease is kept this long in case more of its tasks come (a `get(f.remote())` loop submits its
    # next call within a millisecond or two). Longer holds a worker idle that other submitters wait for: at
    # half load, 200 ms kept a quarter of a simulated cluster's CPUs leased and idle.
    lease_linger_ms: int = 20
    lease_reuse_ms: int = 2_000
    max_pending_requests: int = 4
    pipeline_depth_max: int = 32
    # Tasks shorter than this are pipelined deeper, so the round trip hides behind queued work.
    pipeline_target_ms: float = 2.0
    # Tasks at least this long are pushed one at a time. Pipelining saves a round trip (well under a
    # millisecond) per task; a task queued behind one of exponential length waits as long as a whole task on
    # average, so beyond a few round trips it is a loss (50 ms here put 20% of simulated tasks behind another).
    pipeline_long_ms: float = 10.0
    retry_backoff_ms: int = 50
    # A request of ours still waiting after this long frees our own idle leases of other keys on its peer:
    # they linger only in case more of their tasks come, and here a task of ours already waits.
    idle_yield_after_ms: int = 20
    request_timeout_ms: int = 30_000
    # SPREAD asks for a lease per task, at most this many at once.
    spread_max_pending: int = 64
    # A spillback naming several peers is asked at up to this many of them at once.
    spill_fanout_max: int = 4


@dataclass(frozen=True, slots=True)
class Push:
    """Effect: send task `task_id` to the worker of `lease`."""

    task_id: str
    lease: "Held"


@dataclass(frozen=True, slots=True)
class Steal:
    """Effect: ask the worker of `lease` to hand back these tasks, queued there and not started yet."""

    lease: "Held"
    task_ids: tuple


@dataclass(frozen=True, slots=True)
class ActorPlaced:
    """Effect: the actor-creation task `task_id` was pushed on `lease`, which now belongs to the actor."""

    task_id: str
    lease: "Held"


@dataclass(slots=True)
class Held:
    lease_id: str
    worker_id: str
    worker_addr: str
    worker_ctl_addr: str
    peer_id: str
    peer_addr: str
    key: tuple
    granted_ns: int
    inflight: dict = field(default_factory=dict)  # task_id -> pushed_ns
    idle_since_ns: int = 0
    wanted: bool = False
    draining: bool = False  # no new pushes; return when inflight is empty
    stealing: set = field(default_factory=set)  # tasks we asked its worker to hand back


@dataclass(slots=True)
class TaskInfo:
    task_id: str
    key: tuple
    shape: dict
    strategy: str = "DEFAULT"
    affinity: str | None = None
    soft: bool = True
    locality: dict = field(default_factory=dict)  # peer_id -> bytes of arguments there
    first_target: str | None = None  # peer address to ask first
    actor: bool = False
    # The job its lease is asked for, when not the submitter's: tasks with a runtime_env of their own get
    # workers of their own (a worker takes on the environment of the first task it runs).
    job_id: str | None = None


@dataclass(slots=True)
class _Request:
    request_id: str
    key: tuple
    target_addr: str
    sent_ns: int
    spilled: int
    # Requests for one lease sent to several peers at once (a spillback naming more than one) share a group:
    # the first grant cancels the others. A request not spilled is a group of its own.
    group: str = ""


class _KeyState:
    __slots__ = ("queue", "leases", "requests", "template", "exec_ns_avg", "retry_at_ns")

    def __init__(self, template: TaskInfo):
        self.queue: deque[str] = deque()
        self.leases: list[Held] = []
        self.requests: dict[str, _Request] = {}
        self.template = template
        self.exec_ns_avg = 0.0
        self.retry_at_ns = 0


def _groups(state: _KeyState) -> int:
    """Leases asked for: requests sent to several peers for one lease count once."""
    if len(state.requests) < 2:
        return len(state.requests)
    return len({r.group for r in state.requests.values()})


_MAX_DEAD_WORKERS = 10_000
_NEVER = 1 << 62  # a time no clock reaches  # remembered worker deaths; a grant arrives within seconds of its worker's death


class SubmitterCore:
    def __init__(self, self_id: str, self_addr: str, job_id: str, local_peer_addr: str, *,
                 config: SubmitterConfig | None = None):
        self.self_id = self_id
        self.self_addr = self_addr
        self.job_id = job_id
        self.local_peer_addr = local_peer_addr
        self.config = config or SubmitterConfig()
        self.keys: dict[tuple, _KeyState] = {}
        self.tasks: dict[str, TaskInfo] = {}
        self._lease_of_task: dict[str, Held] = {}
        self._requests: dict[str, _Request] = {}
        self._leases: dict[str, Held] = {}
        # Workers reported dead. A grant of one can arrive after the news of its death (the peer granted it,
        # then reclaimed it when it wrote us off during a partition; the two messages come by different
        # routes): such a grant is void, or a task pushed to it would wait for ever.
        self._dead_workers: dict[str, None] = {}
        # Addresses of peers reported dead (bounded, oldest forgotten first). A spillback or a locality
        # target naming one is asked at the local peer instead: a request to a dead peer would otherwise
        # wait out the whole request timeout.
        self._dead_peer_addrs: dict[str, None] = {}
        self._seq = 0
        # When to look again for requests kept waiting by our own idle leases of other keys (_NEVER: no need).
        self._yield_check_ns = _NEVER
        self.peers_that_fit = 1  # set by the runtime from membership; bounds pipelined lease requests

    # ---- submission ---------------------------------------------------------------------------------

    def submit(self, now_ns: int, task: TaskInfo) -> list:
        self.tasks[task.task_id] = task
        state = self.keys.get(task.key)
        if state is None:
            state = self.keys[task.key] = _KeyState(task)
        state.queue.append(task.task_id)
        return self._pump(now_ns, state)

    def queued(self) -> int:
        return sum(len(s.queue) for s in self.keys.values())

    def cancel(self, now_ns: int, task_id: str) -> tuple[bool, list]:
        """Remove a task that is still queued here. Returns (removed, effects)."""
        task = self.tasks.get(task_id)
        if task is None or task_id in self._lease_of_task:
            return False, []
        state = self.keys.get(task.key)
        if state is not None:
            try:
                state.queue.remove(task_id)
            except ValueError:
                return False, []
        del self.tasks[task_id]
        return True, self._pump(now_ns, state) if state is not None else []

    # ---- pushing ------------------------------------------------------------------------------------

    def _depth(self, state: _KeyState) -> int:
        if state.template.actor or state.template.strategy == "SPREAD":
            return 1
        avg_ms = state.exec_ns_avg / 1e6
        if avg_ms <= 0 or avg_ms >= self.config.pipeline_long_ms:
            # Unknown or long: one at a time, so two long tasks never queue on one worker while another
            # idles; the round trip between them costs little next to the task.
            return 1
        # Short: keep the next task(s) waiting at the worker, so the round trip back here is hidden behind
        # the running one.
        depth = int(self.config.pipeline_target_ms / avg_ms) + 2
        return max(2, min(self.config.pipeline_depth_max, depth))

    def _pump(self, now_ns: int, state: _KeyState) -> list:
        effects: list = []
        if state.queue:
            if state.template.actor:
                return self._place_actor(state) + self._request_more(now_ns, state)
            depth = self._depth(state)
            # Level by level: every lease gets a first task before any gets a second, so an idle worker is
            # never passed over for a queue behind a busy one.
            leases = [held for held in state.leases if not held.draining]
            queue = state.queue
            for level in range(1, depth + 1):
                for held in leases:
                    if not queue:
                        break
                    if len(held.inflight) < level:
                        task_id = queue.popleft()
                        held.inflight[task_id] = now_ns
                        self._lease_of_task[task_id] = held
                        effects.append(Push(task_id, held))
                if not queue:
                    break
        effects += self._request_more(now_ns, state)
        return effects

    def _place_actor(self, state: _KeyState) -> list:
        """An actor-creation key: each granted lease takes one creation task and leaves the pool for good."""
        effects = []
        for held in list(state.leases):
            if not state.queue:
                break
            if held.draining or held.inflight:
                continue
            task_id = state.queue.popleft()
            state.leases.remove(held)
            self._leases.pop(held.lease_id, None)
            self.tasks.pop(task_id, None)
            effects.append(ActorPlaced(task_id, held))
        return effects

    def _request_more(self, now_ns: int, state: _KeyState) -> list:
        # Tasks not started yet: queued here, or pipelined behind a running one at a worker. A task pushed
        # deep on one worker still wants a worker of its own, or a long task ahead of it would hold it up.
        backlog = len(state.queue)
        for held in state.leases:
            if len(held.inflight) > 1:
                backlog += len(held.inflight) - 1
        if not backlog and not state.requests:
            return []
        effects: list = []
        if not backlog:
            # Nothing waits: outstanding requests would only grab workers we do not need.
            for req in list(state.requests.values()):
                effects.append(Send(req.target_addr, CancelLeaseRequest(req.request_id)))
                self._drop_request(state, req)
            return effects
        if now_ns < state.retry_at_ns:
            return [Timer(state.retry_at_ns)]
        if state.template.strategy == "SPREAD":
            # One lease per task: each request is placed on the next peer in turn.
            limit = self.config.spread_max_pending
        else:
            limit = max(1, min(self.config.max_pending_requests, max(1, self.peers_that_fit)))
        want = min(backlog, limit) - _groups(state)
        task = self.tasks.get(state.queue[0]) if state.queue else None
        task = task or state.template
        for _ in range(max(0, want)):
            target = task.first_target or self.local_peer_addr
            effects.append(self._send_request(now_ns, state, target, 0, task))
        return effects + self._yield_timer()

    def _yield_timer(self) -> list:
        return [Timer(self._yield_check_ns)] if self._yield_check_ns < _NEVER else []

    def _send_request(self, now_ns: int, state: _KeyState, target: str, spilled: int, task: TaskInfo,
                      group: str = "") -> Send:
        if target in self._dead_peer_addrs:
            # Fail over at once; the local peer may spill again (its membership knows the death too).
            target, spilled = self.local_peer_addr, 0
        self._seq += 1
        request_id = f"{self.self_id}:r{self._seq}"
        req = _Request(request_id, state.template.key, target, now_ns, spilled, group or request_id)
        state.requests[request_id] = req
        self._requests[request_id] = req
        if self._idle_elsewhere(state, target):
            self._yield_check_ns = min(self._yield_check_ns, now_ns + self.config.idle_yield_after_ms * 1_000_000)
        return Send(target, RequestLease(request_id, self.self_id, self.self_addr, task.job_id or self.job_id,
                                         dict(task.shape),
                                         spilled, task.strategy, task.affinity, task.soft, task.actor,
                                         dict(task.locality)))

    def _drop_request(self, state: _KeyState | None, req: _Request) -> None:
        self._requests.pop(req.request_id, None)
        if state is not None:
            state.requests.pop(req.request_id, None)

    # ---- replies from peers -------------------------------------------------------------------------

    def on_message(self, now_ns: int, sender: str, msg) -> list:
        """A peer's answer to our lease requests (`sender` unused: each names its request or lease)."""
        if isinstance(msg, LeaseGranted):
            return self.on_granted(now_ns, msg)
        if isinstance(msg, LeaseSpillback):
            return self.on_spillback(now_ns, msg)
        if isinstance(msg, LeaseRejected):
            return self.on_rejected(now_ns, msg)
        if isinstance(msg, LeaseRevoked):
            return self.on_revoked(now_ns, msg.lease_id, f"its worker died ({msg.reason})")
        if isinstance(msg, LeaseWanted):
            return self.on_wanted(now_ns, msg.lease_id)
        return []

    def on_granted(self, now_ns: int, msg: LeaseGranted) -> list:
        req = self._requests.get(msg.request_id)
        if req is None:
            # We cancelled it meanwhile (or it is a duplicate): hand the worker straight back.
            return [Send(msg.peer_addr, ReturnLease(msg.lease_id, False))]
        state = self.keys.get(req.key)
        self._drop_request(state, req)
        cancels = self._cancel_group(state, req)
        if msg.worker_id in self._dead_workers:
            effects = cancels + [Send(msg.peer_addr, ReturnLease(msg.lease_id, True))]
            return effects + (self._request_more(now_ns, state) if state is not None else [])
        if state is None:
            return cancels + [Send(msg.peer_addr, ReturnLease(msg.lease_id, False))]
        held = Held(msg.lease_id, msg.worker_id, msg.worker_addr, msg.worker_ctl_addr, msg.peer_id, msg.peer_addr,
                    req.key, now_ns, idle_since_ns=now_ns)
        state.leases.append(held)
        self._leases[held.lease_id] = held
        effects = cancels + self._pump(now_ns, state)
        if not held.inflight and held in state.leases:
            effects += self._steal_for(state, held) or self._maybe_release(now_ns, state, held)
        return effects

    def _cancel_group(self, state: _KeyState | None, granted: _Request) -> list:
        """`granted` got its lease: its siblings, waiting at other peers for the same lease, are not needed.
        (One that was granted meanwhile comes back as a grant for a request we no longer know, and is
        returned at once.)"""
        if state is None or not state.requests:
            return []
        effects = []
        for req in [r for r in state.requests.values() if r.group == granted.group]:
            effects.append(Send(req.target_addr, CancelLeaseRequest(req.request_id)))
            self._drop_request(state, req)
        return effects

    def _steal_for(self, state: _KeyState, idle: Held) -> list:
        """An idle lease while another of the same key has tasks queued behind a running one: take them
        back, so a long task never holds up short ones that another worker could run now."""
        if state.queue or state.template.actor:
            return []
        effects = []
        for held in state.leases:
            if held is idle or len(held.inflight) < 2:
                continue
            waiting = [t for t in list(held.inflight)[1:] if t not in held.stealing]
            if waiting:
                held.stealing.update(waiting)
                effects.append(Steal(held, tuple(waiting)))
        return effects

    def on_spillback(self, now_ns: int, msg: LeaseSpillback) -> list:
        req = self._requests.get(msg.request_id)
        if req is None:
            return []
        state = self.keys.get(req.key)
        self._drop_request(state, req)
        if state is None or not (state.queue or any(len(h.inflight) > 1 for h in state.leases)):
            return []
        task = (self.tasks.get(state.queue[0]) if state.queue else None) or state.template
        # Ask every peer named at once; the first grant cancels the others (`_cancel_group`).
        first = self._send_request(now_ns, state, msg.target_addr, req.spilled + 1, task)
        effects = [first]
        others = msg.others if isinstance(msg.others, (tuple, list)) else ()
        for other in others[:self.config.spill_fanout_max - 1]:
            if isinstance(other, (tuple, list)) and len(other) == 2 and isinstance(other[1], str):
                effects.append(self._send_request(now_ns, state, other[1], req.spilled + 1, task,
                                                  group=first.msg.request_id))
        return effects + self._yield_timer()

    def on_rejected(self, now_ns: int, msg: LeaseRejected) -> list:
        req = self._requests.get(msg.request_id)
        if req is None:
            return []
        state = self.keys.get(req.key)
        self._drop_request(state, req)
        if state is None or any(r.group == req.group for r in state.requests.values()):
            return []  # a sibling still waits for this lease elsewhere
        state.retry_at_ns = now_ns + self.config.retry_backoff_ms * 1_000_000
        # Retry at the local peer: a stale view ends here, never in a loop.
        state.template.first_target = None
        for task_id in state.queue:
            task = self.tasks.get(task_id)
            if task is not None:
                task.first_target = None
        return [Timer(state.retry_at_ns)]

    def on_revoked(self, now_ns: int, lease_id: str, why: str = "its worker died") -> list:
        """The lease's worker died: the tasks in flight on it come back as one `TasksLost` (the last effect)."""
        lost, effects = self._revoke(now_ns, lease_id)
        return effects + [TasksLost(tuple(lost), why)] if lost else effects

    def _revoke(self, now_ns: int, lease_id: str) -> tuple[list[str], list]:
        held = self._leases.pop(lease_id, None)
        if held is None:
            return [], []
        state = self.keys.get(held.key)
        if state is not None and held in state.leases:
            state.leases.remove(held)
        lost = list(held.inflight)
        for task_id in lost:
            self._lease_of_task.pop(task_id, None)
        held.inflight.clear()
        return lost, (self._pump(now_ns, state) if state is not None else [])

    def on_worker_died(self, now_ns: int, worker_id: str, why: str = "its worker process died") -> list:
        self._dead_workers[worker_id] = None
        if len(self._dead_workers) > _MAX_DEAD_WORKERS:
            del self._dead_workers[next(iter(self._dead_workers))]
        for held in list(self._leases.values()):
            if held.worker_id == worker_id:
                return self.on_revoked(now_ns, held.lease_id, why)
        return []

    def on_peer_died(self, now_ns: int, peer_id: str, peer_addr: str = "", why: str = "") -> list:
        """A peer died: its leases are gone (their tasks in flight come back as one `TasksLost`, the last
        effect), and requests waiting there are asked again at the local peer."""
        lost: list[str] = []
        effects: list = []
        if peer_addr and peer_addr != self.local_peer_addr:
            self._dead_peer_addrs[peer_addr] = None
            if len(self._dead_peer_addrs) > _MAX_DEAD_WORKERS:
                del self._dead_peer_addrs[next(iter(self._dead_peer_addrs))]
        for held in list(self._leases.values()):
            if held.peer_id == peer_id:
                l, e = self._revoke(now_ns, held.lease_id)
                lost += l
                effects += e
        if peer_addr:
            for req in list(self._requests.values()):
                if req.target_addr == peer_addr:
                    state = self.keys.get(req.key)
                    self._drop_request(state, req)
                    if state is not None:
                        state.template.first_target = None
                        for task_id in state.queue:
                            task = self.tasks.get(task_id)
                            if task is not None and task.first_target == peer_addr:
                                task.first_target = None
                        effects += self._request_more(now_ns, state)
        if lost:
            effects.append(TasksLost(tuple(lost), why or f"its peer {peer_id} died"))
        return effects

    def on_wanted(self, now_ns: int, lease_id: str) -> list:
        held = self._leases.get(lease_id)
        if held is None:
            return []
        held.wanted = True
        state = self.keys.get(held.key)
        if not held.inflight and state is not None:
            return self._release(now_ns, state, held)
        return []

    # ---- completion ---------------------------------------------------------------------------------

    def on_task_done(self, now_ns: int, task_id: str, exec_ns: int = 0, worker_id: str | None = None) -> list:
        """A reply for the task arrived (success or error), from `worker_id` if known. Tell us of every
        reply, even for a task already done: each may free a worker."""
        held = self._lease_of_task.get(task_id)
        if held is not None and worker_id is not None and held.worker_id != worker_id:
            # A reply from an earlier attempt, on a worker we had written off, that answered after all. The
            # task is done, but the attempt we pushed since still runs on `held`'s worker: the lease stays
            # busy until that one answers too, or its worker would be handed to someone else mid-task.
            self.tasks.pop(task_id, None)
            return []
        self._lease_of_task.pop(task_id, None)
        self.tasks.pop(task_id, None)
        if held is None:
            return []
        held.inflight.pop(task_id, None)
        held.stealing.discard(task_id)
        state = self.keys.get(held.key)
        if state is None:
            return []
        if exec_ns > 0:
            state.exec_ns_avg = exec_ns if state.exec_ns_avg == 0 else 0.8 * state.exec_ns_avg + 0.2 * exec_ns
        if held.wanted and now_ns - held.granted_ns > self.config.lease_reuse_ms * 1_000_000:
            held.draining = True  # fairness: others wait and the reuse window is over: let them have it
        if state.template.strategy == "SPREAD":
            held.draining = True  # a SPREAD lease serves one task; the next goes to the next peer
        effects = self._pump(now_ns, state)
        if not held.inflight and held in state.leases:
            effects += self._steal_for(state, held) or self._maybe_release(now_ns, state, held)
        return effects

    def forget_task(self, task_id: str) -> None:
        """The runtime will resubmit this task itself (retry): drop our record of where it ran."""
        held = self._lease_of_task.pop(task_id, None)
        if held is not None:
            held.inflight.pop(task_id, None)
        self.tasks.pop(task_id, None)

    def bounce(self, now_ns: int, task_ids: list[str], from_worker: str | None = None) -> list:
        """A worker returned tasks it had not started — we stole them, or it blocked in `get` — queue
        them again, first. A task we have pushed to another worker since is not `from_worker`'s to return:
        that report is stale, and taking the task off its new lease would leave that worker's answer
        unexpected."""
        effects: list = []
        touched = {}
        for task_id in reversed(task_ids):
            held = self._lease_of_task.get(task_id)
            if held is not None and from_worker is not None and held.worker_id != from_worker:
                continue
            self._lease_of_task.pop(task_id, None)
            task = self.tasks.get(task_id)
            if held is not None:
                held.inflight.pop(task_id, None)
                if task_id in held.stealing:
                    held.stealing.discard(task_id)
                else:
                    held.draining = True  # its worker is busy in a blocking get; don't feed it more
            if task is None:
                continue
            state = self.keys.get(task.key)
            if state is not None:
                state.queue.appendleft(task_id)
                touched[task.key] = state
        for state in touched.values():
            effects += self._pump(now_ns, state)
            for held in list(state.leases):
                if not held.inflight and held.draining:
                    effects += self._release(now_ns, state, held)
        return effects

    def _maybe_release(self, now_ns: int, state: _KeyState, held: Held) -> list:
        held.idle_since_ns = now_ns
        if held.wanted or held.draining:
            return self._release(now_ns, state, held)
        return [Timer(now_ns + self.config.lease_linger_ms * 1_000_000)]

    def _release(self, now_ns: int, state: _KeyState, held: Held) -> list:
        if held in state.leases:
            state.leases.remove(held)
        self._leases.pop(held.lease_id, None)
        effects: list = [Send(held.peer_addr, ReturnLease(held.lease_id, False))]
        if state.queue:
            effects += self._request_more(now_ns, state)
        return effects

    # ---- time ---------------------------------------------------------------------------------------

    def _idle_elsewhere(self, state: _KeyState, peer_addr: str) -> list[tuple[_KeyState, Held]]:
        """Our idle leases on `peer_addr` that belong to keys other than `state`'s."""
        return [(other, held) for other in self.keys.values() if other is not state and not other.template.actor
                for held in other.leases if not held.inflight and held.peer_addr == peer_addr]

    def _yield_idle_leases(self, now_ns: int) -> list:
        """Requests of ours that waited `idle_yield_after_ms` while we hold idle leases of other keys on the
        same peer: give those back. (The peer's `LeaseWanted` does this for other holders' requests; for our
        own it cannot tell an idle lease of another key from a busy one of the same key.) A request that is
        granted at once never gets here, so two keys used in turn keep a lease each."""
        self._yield_check_ns = _NEVER
        effects: list = []
        after_ns = self.config.idle_yield_after_ms * 1_000_000
        for state in list(self.keys.values()):
            for req in list(state.requests.values()):
                due = req.sent_ns + after_ns
                idle = self._idle_elsewhere(state, req.target_addr)
                if not idle:
                    continue
                if now_ns < due:
                    self._yield_check_ns = min(self._yield_check_ns, due)
                    continue
                for other, held in idle:
                    effects += self._release(now_ns, other, held)
        return effects + self._yield_timer()

    def on_tick(self, now_ns: int) -> list:
        effects: list = []
        if now_ns >= self._yield_check_ns:
            effects += self._yield_idle_leases(now_ns)
        linger_ns = self.config.lease_linger_ms * 1_000_000
        timeout_ns = self.config.request_timeout_ms * 1_000_000
        for key, state in list(self.keys.items()):
            for held in list(state.leases):
                if not held.inflight and now_ns - held.idle_since_ns >= linger_ns:
                    effects += self._release(now_ns, state, held)
            for req in list(state.requests.values()):
                if now_ns - req.sent_ns >= timeout_ns:
                    # The peer may have died with our request; ask again (at the local peer).
                    effects.append(Send(req.target_addr, CancelLeaseRequest(req.request_id)))
                    self._drop_request(state, req)
                    state.template.first_target = None
            if state.queue and (now_ns >= state.retry_at_ns):
                effects += self._pump(now_ns, state)
            if not state.queue and not state.leases and not state.requests:
                del self.keys[key]
        return effects

    def release_all(self) -> list:
        effects: list = []
        for state in self.keys.values():
            state.queue.clear()
            for held in list(state.leases):
                effects += self._release(0, state, held)
            for req in list(state.requests.values()):
                effects.append(Send(req.target_addr, CancelLeaseRequest(req.request_id)))
                self._drop_request(state, req)
        return effects

    def held_leases(self) -> list[Held]:
        return list(self._leases.values())

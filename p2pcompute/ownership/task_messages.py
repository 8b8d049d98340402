"""Messages of the owner's cores (`ownership/owner.py`, `ownership/actors.py`): pushing tasks and their replies,
task control, actor locations, and the deaths and cluster facts an owner acts on.

Their type codes were allotted with the runtime's (400-599) and never change: append-only.
"""

from __future__ import annotations

from p2pcompute.net.messages import message


@message(408)
class CancelTask:
    """Owner -> worker (client address): cancel `task_id` if queued or running there (and, if `recursive`,
    every task it submitted)."""

    task_id: str
    force: bool
    recursive: bool
    reply_to: str


@message(410)
class ForceKillWorker:
    """Owner -> the worker's peer: kill this worker process (cancel with force, kill of an actor)."""

    worker_id: str
    reason: str


@message(504)
class ResolveActor:
    """Caller -> actor owner: where does `actor_id` run? The owner answers now and again on every change."""

    actor_id: str
    reply_to: str


@message(505)
class ActorLocation:
    """Owner -> callers: `state` is "pending" | "alive" | "restarting" | "dead"; `error` why it is dead."""

    actor_id: str
    state: str
    worker_id: str
    addr: str
    ctl_addr: str
    incarnation: int
    error: bytes | None


@message(506)
class KillActor:
    actor_id: str
    no_restart: bool


@message(403)
class ProcessDied:
    """Peer -> clients: a process is gone; drop its leases, borrows, and fail what it was running."""

    proc_id: str
    kind: str
    reason: str
    addr: str
    task_addr: str


@message(500)
class PushTask:
    """Submitter -> leased worker (or actor caller -> actor worker): run this.

    `kind` is "task", "actor_create" or "actor_call". `code` carries the pickled function or class the first
    time this submitter sends `code_id` to this worker; `job_env` likewise on the first push to a worker.
    Arguments: `args` is an inline blob (or None when stored as object `args_object`); `slots` resolves the
    top-level ref arguments, one per ref in the wire layout of `ownership/wire_values.py` (`slot_to_wire`,
    `slot_from_wire`).
    """

    task_id: str
    kind: str
    name: str
    job_id: str
    code_id: str
    code: bytes | None
    job_env: dict | None
    args: bytes | None
    args_object: list | None
    slots: list
    refs: list             # refs nested in the arguments: [[object_id, owner_addr], ...]
    return_ids: list
    owner_addr: str
    actor_id: str | None
    method: str | None
    seq: int
    options: dict


@message(501)
class TaskReply:
    """Worker -> owner: results of `task_id`.

    `returns` has one result per return id, in the wire layout of `ownership/wire_values.py` (build them with
    `result_to_wire`, read them with `results_from_wire`). `system_error` is set when the task did not run its
    code (cancelled, actor dead).
    """

    task_id: str
    returns: list
    exec_ns: int
    worker_id: str
    node_id: str
    system_error: bytes | None


@message(502)
class TasksBounced:
    """Worker -> submitter: I blocked in `get` before starting these; schedule them elsewhere."""

    task_ids: list


@message(415)
class ClusterInfo:
    """Peer -> local clients: how many peers are alive (bounds how many lease requests are worth sending)."""

    alive_peers: int


@message(426)
class StealTasks:
    """Submitter -> a leased worker's I/O thread: hand back these tasks if they have not started; the answer
    is a `TasksBounced` (to `reply_to`) listing those that will not run here."""

    task_ids: list
    reply_to: str

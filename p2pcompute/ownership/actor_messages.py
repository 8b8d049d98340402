"""Messages of the actor machines and of task control, spoken by the owner's cores (`ownership/actors.py`).

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

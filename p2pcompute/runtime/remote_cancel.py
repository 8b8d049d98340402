"""`cancel()` of a ref this process did not submit: the borrower asks the ref's owner, which cancels.

Only an owner knows where its task is (queued in its submitter, leased to a worker, or waiting on an actor),
so a borrower sends the owner the same `CancelTask` a submitter sends a worker, naming the task. The owner
recognises a task of its own (`on_cancel_request` returns True) and cancels it as if its own code had called
`cancel()`; the borrower's `get` then raises `TaskCancelledError` like anyone's. A cancel for a task the owner
no longer has (finished, or unknown) changes nothing, as in Ray.
"""

from __future__ import annotations

from p2pcompute.errors import InvalidArgumentError
from p2pcompute.runtime import messages as rm


def task_of(object_id: str) -> str | None:
    """The task that makes `object_id`: return ids are `<task id>.<n>`, task ids `<process>.<n>`."""
    parts = object_id.split(".")
    return ".".join(parts[:2]) if len(parts) == 3 else None


def ask_owner(rt, object_id: str, owner_addr: str, force: bool, recursive: bool) -> None:
    """Borrower side (any thread)."""
    task_id = task_of(object_id)
    if task_id is None:
        raise InvalidArgumentError(f"cancel() of {object_id}: this ref was made by put(), not by a task")
    msg = rm.CancelTask(task_id, force, recursive, rt.addr)
    rt.call_soon(lambda: rt.send(owner_addr, msg))


def on_cancel_request(rt, msg: rm.CancelTask) -> bool:
    """Owner side (the client's I/O thread): cancel `msg.task_id` if this process submitted it.

    Returns whether the request was about one of our own tasks (else it is for a task we execute)."""
    rec = rt.tasks.get(msg.task_id) if isinstance(msg.task_id, str) else None
    if rec is None:
        return False
    if not rec.done and rec.return_ids:
        rt.cancel(rec.return_ids[0], bool(msg.force), bool(msg.recursive))
    return True

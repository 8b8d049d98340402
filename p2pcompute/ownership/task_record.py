"""What an owner keeps about each task it submitted, until the task finishes (and may need to run again).

The record is shared by the owner's cores (the actor machines in `ownership/actors.py`) and the client
process that drives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pcompute.lease.submitter import Held


@dataclass(eq=False)
class TaskRecord:
    """Everything the owner keeps about a task until it finishes (and may need to run it again)."""

    task_id: str
    kind: str                      # "task" | "actor_create" | "actor_call"
    name: str
    code_id: str
    code: bytes | None
    args: bytes | None
    args_object: list | None       # [object_id, size] when the arguments blob is in the store
    slot_refs: list                # top-level ref arguments: [(object_id, owner_addr), ...]
    nested_refs: list              # refs inside arguments: [(object_id, owner_addr), ...]
    return_ids: list
    shape: dict
    options: dict
    max_retries: int = 0
    retry_exceptions: object = False
    actor_id: str | None = None
    method: str | None = None
    seq: int = 0
    # state
    slots: list | None = None
    deps_left: int = 0
    held: Held | None = None       # where it was pushed
    cancelled: bool = False
    done: bool = False
    scheduled: bool = False
    order_ready: bool = False      # actor calls: arguments ready, waiting only for earlier calls to go on
    push_ns: int = 0
    locality: dict = field(default_factory=dict)
    # lineage: the arguments stay pinned while stored results may need rebuilding
    lineage_pinned: bool = False
    lineage_live: int = 0
    rebuilds: int = 0
    arg_losses: int = 0


"""What `train_loop_per_worker` sees: its context, its dataset shard, its checkpoint, and where reports go.

Theory of operation. A worker actor runs the training loop in one of its threads and, for that thread,
installs a `Session` before calling it (`_SESSION`, a process global: one worker process runs one loop at a
time). The module-level functions (`get_context`, `report`, `get_checkpoint`, `get_dataset_shard`,
`allreduce`, ...) look the session up, so the loop needs no argument to reach them, as in Ray Train.

`report(metrics, checkpoint=...)` is synchronous when it carries a checkpoint: it returns once the run's
controller actor has stored the checkpoint, so a worker killed right after `report` returns has lost nothing
a restart needs. Metrics without a checkpoint are sent by rank 0 only (the others' would be discarded, as
in Ray), without waiting.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.common import Checkpoint
from p2pcompute.mlkit.train.collective import Communicator

_SESSION: "Session | None" = None
_LOCK = threading.Lock()


@dataclass(frozen=True)
class TrainContext:
    """Where this worker sits in its group (Ray Train's `get_context()` answers the same questions)."""

    world_rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    experiment_name: str
    storage_path: str | None
    attempt: int  # 0 on the first start of the group, k after its k-th restart

    def get_world_rank(self) -> int:
        return self.world_rank

    def get_world_size(self) -> int:
        return self.world_size

    def get_local_rank(self) -> int:
        return self.local_rank

    def get_local_world_size(self) -> int:
        return self.local_world_size

    def get_node_rank(self) -> int:
        return self.node_rank

    def get_experiment_name(self) -> str:
        return self.experiment_name

    def get_storage(self) -> str | None:
        return self.storage_path


@dataclass
class Session:
    """One running training loop: its context, group, inputs and report channel."""

    context: TrainContext
    communicator: Communicator
    controller: Any  # actor handle of the run's controller, or None when run outside a trainer
    shards: dict[str, Any]  # dataset name -> ObjectRef of this rank's shard (fetched on first use)
    checkpoint: Checkpoint | None
    report_count: int = 0
    # Reports sent without waiting; `run` waits for them before returning, so the driver never finishes
    # the run while a report is still on its way to the controller.
    unacknowledged: list = field(default_factory=list)
    _shard_values: dict[str, Any] = field(default_factory=dict)


def _install(session: Session | None) -> None:
    global _SESSION
    with _LOCK:
        _SESSION = session


def _session(what: str) -> Session:
    session = _SESSION
    if session is None:
        raise RuntimeError(f"train.{what}() works only inside train_loop_per_worker, run by a trainer's fit()")
    return session


def get_context() -> TrainContext:
    """This worker's rank, the group's size, local rank and node rank."""
    return _session("get_context").context


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint to resume from: the latest one reported (after a restart), the trainer's
    `resume_from_checkpoint`, or None on a fresh start."""
    return _session("get_checkpoint").checkpoint


def get_dataset_shard(name: str = "train"):
    """This worker's part of `datasets[name]` (rows split evenly, in order, across the workers)."""
    session = _session("get_dataset_shard")
    if name not in session.shards:
        raise KeyError(f"no dataset named {name!r} was given to the trainer; it has {sorted(session.shards)}")
    if name not in session._shard_values:
        value = session.shards[name]
        session._shard_values[name] = p2p.get(value) if isinstance(value, p2p.ObjectRef) else value
    return session._shard_values[name]


def report(metrics: dict, checkpoint: Checkpoint | None = None) -> None:
    """Record `metrics` (rank 0's are kept) and, optionally, a checkpoint to restart from.

    Every rank should call report the same number of times; each call is one `training_iteration`.
    """
    session = _session("report")
    if not isinstance(metrics, dict):
        raise TypeError(f"train.report needs a dict of metrics, got {type(metrics).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        raise TypeError("train.report(checkpoint=...) needs a p2pcompute.mlkit.train.Checkpoint "
                        f"(Checkpoint.from_dict / from_directory), got {type(checkpoint).__name__}")
    session.report_count += 1
    if session.controller is None:
        return
    rank, attempt = session.context.world_rank, session.context.attempt
    clean = {k: _plain(v) for k, v in metrics.items()}
    if checkpoint is not None:
        p2p.get(session.controller.report.remote(attempt, rank, session.report_count, clean, checkpoint))
    elif rank == 0:
        session.unacknowledged.append(session.controller.report.remote(attempt, rank, session.report_count, clean,
                                                                       None))
        if len(session.unacknowledged) > 64:  # keep the list short in long runs
            p2p.get(session.unacknowledged)
            session.unacknowledged.clear()


def _plain(value):
    # numpy scalars become Python numbers, so metrics files and tables read them as numbers.
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---- collectives on the current group ----------------------------------------------------------------------


def allreduce(array, op: str = "sum") -> np.ndarray:
    """Elementwise `op` ("sum", "mean", "max", "min", "prod") of `array` across the workers."""
    return _session("allreduce").communicator.allreduce(array, op)


def broadcast(array, src_rank: int = 0) -> np.ndarray:
    """Rank `src_rank`'s `array`, on every worker."""
    return _session("broadcast").communicator.broadcast(array, src_rank)


def allgather(array) -> list[np.ndarray]:
    """Every worker's `array`, in rank order."""
    return _session("allgather").communicator.allgather(array)


def allgather_object(obj) -> list:
    """Every worker's small picklable `obj`, in rank order."""
    return _session("allgather_object").communicator.allgather_object(obj)


def barrier() -> None:
    """Wait until every worker reaches this call."""
    _session("barrier").communicator.barrier()


def collective_stats():
    """Bytes this worker has sent per collective (`CollectiveStats`)."""
    return _session("collective_stats").communicator.stats


def in_session() -> bool:
    """Whether the calling code runs inside a training loop."""
    return _SESSION is not None

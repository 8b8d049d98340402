"""What a trainable calls from inside a trial: `report`, `get_checkpoint`, `get_trial_id`, `get_context`.

Theory of operation: a trial runs the user's function in a thread of its trial actor (`runner.py`). The
thread holds a `Session`; `report` appends `(metrics, checkpoint)` to the session's buffer and returns at once
(the driver drains the buffer in batches with long polls), so a report costs microseconds, not a round trip.
At iterations where the scheduler decides (ASHA's rungs, PBT's perturbation points: `Session.waits_at`), the
trial waits after reporting until the driver acknowledges that iteration (sent with its next poll), so a
trial about to be stopped does not compute past the decision. When the driver decides the trial must end (a scheduler stopped it, a stop condition hit, it is being
restarted), the next `report` raises `StopTrial` (a `BaseException`, so `except Exception` in user code does
not swallow it) and the thread unwinds.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

from ..common import Checkpoint

__all__ = ["report", "get_checkpoint", "get_trial_id", "get_context", "StopTrial", "Session"]

_local = threading.local()


class StopTrial(BaseException):
    """Raised by `report` in a trial the driver has ended; let it propagate."""


class Session:
    """The state of one run of a trainable in its thread."""

    def __init__(self, trial_id: str, config: dict, checkpoint: Checkpoint | None, start_iteration: int,
                 generation: int, cond: threading.Condition, decision_points: dict | None = None):
        self.trial_id = trial_id
        self.config = config
        self.checkpoint = checkpoint
        self.iteration = start_iteration
        self.generation = generation
        self.cond = cond
        self.buffer: list[tuple[dict, Checkpoint | None]] = []
        self.stop_requested = False
        self.done = False
        self.error: str | None = None
        self.start_time = time.time()
        self.last_report_time = self.start_time
        # Iterations after which to wait for the driver's go-ahead: {"at": [...], "every": k} (see
        # TrialScheduler.decision_points), and the highest iteration the driver has acknowledged.
        points = decision_points or {}
        self.wait_at = frozenset(points.get("at") or ())
        self.wait_every = points.get("every") or 0
        self.acked = start_iteration
        self.waiting = False  # blocked at a decision point until acknowledged

    def waits_at(self, iteration: int) -> bool:
        return iteration in self.wait_at or bool(self.wait_every and iteration % self.wait_every == 0)

    def acknowledge(self, iteration: int) -> None:
        """The driver has decided on every report up to `iteration` (called with the condition held)."""
        if iteration > self.acked:
            self.acked = iteration
            self.cond.notify_all()

    def report(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None) -> None:
        if not isinstance(metrics, Mapping):
            raise TypeError(f"tune.report needs a dict of metrics, got {type(metrics).__name__}")
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"tune.report's checkpoint must be a tune.Checkpoint, got {type(checkpoint).__name__}")
        now = time.time()
        self.iteration += 1
        result = dict(metrics)
        result.setdefault("training_iteration", self.iteration)
        result["trial_id"] = self.trial_id
        result["time_this_iter_s"] = now - self.last_report_time
        result["time_total_s"] = now - self.start_time
        result["timestamp"] = now
        self.last_report_time = now
        with self.cond:
            if self.stop_requested:
                raise StopTrial()
            self.buffer.append((result, checkpoint))
            self.cond.notify_all()
            if self.waits_at(self.iteration):
                iteration = self.iteration
                self.waiting = True
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.acked >= iteration or self.stop_requested)
                self.waiting = False
                if self.stop_requested:
                    raise StopTrial()
        if checkpoint is not None:
            self.checkpoint = checkpoint


def _session() -> Session:
    session = getattr(_local, "session", None)
    if session is None:
        raise RuntimeError("tune.report / tune.get_checkpoint only work inside a trial run by tune.Tuner "
                           "(this thread is not running a trial)")
    return session


def report(metrics: Mapping[str, Any], *, checkpoint: Checkpoint | None = None) -> None:
    """Report this iteration's metrics (and optionally a checkpoint to resume from)."""
    _session().report(metrics, checkpoint)


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint to resume from: None on a fresh start, else the last one reported (after a retry or a
    restore) or the donor's (after a PBT exploit)."""
    return _session().checkpoint


def get_trial_id() -> str:
    return _session().trial_id


def get_context() -> dict:
    """`trial_id`, `iteration` (reports so far, counting those before a restart) and `config`."""
    s = _session()
    return {"trial_id": s.trial_id, "iteration": s.iteration, "config": s.config}

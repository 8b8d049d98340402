"""The trial scheduler interface, its decisions, and FIFO.

A scheduler is a pure decision object fed with each trial's results and answering, per result, what the
trial does next: `CONTINUE`, `STOP` (early stopping), or `Exploit(donor, config)` (restart this trial from
trial `donor`'s latest checkpoint with a new config: population based training). It never runs anything and
reads no clock: time comes from the results (`time_attr`, `training_iteration` by default).

Results are oriented internally so that higher is better (`score`), whatever the user's `mode`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

__all__ = ["CONTINUE", "STOP", "Exploit", "TrialScheduler", "FIFOScheduler"]

CONTINUE = "CONTINUE"
STOP = "STOP"


@dataclasses.dataclass(frozen=True)
class Exploit:
    """Restart the trial from `donor`'s latest checkpoint with `config` (PBT's exploit + explore)."""

    donor: str
    config: dict


class TrialScheduler:
    """Base class: every trial runs to completion (FIFO)."""

    def __init__(self, metric: str | None = None, mode: str | None = None, time_attr: str = "training_iteration"):
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.time_attr = time_attr

    def set_search_properties(self, metric: str | None, mode: str | None) -> None:
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric = self.metric or metric
        self.mode = self.mode or mode

    def needs_metric(self) -> bool:
        return False

    def on_trial_add(self, trial_id: str, config: Mapping[str, Any]) -> None:
        """A trial is about to start (or restart)."""

    def on_trial_result(self, trial_id: str, result: Mapping[str, Any]):
        """The decision for this result: CONTINUE, STOP or Exploit."""
        return CONTINUE

    def decision_points(self, trial_id: str) -> dict | None:
        """Iterations (counted in reports) after which the trial should wait for this scheduler's decision
        before computing more: `{"at": [iterations], "every": k}`, or None to never wait. Waiting costs one
        round trip to the driver; not waiting lets a trial compute past a decision to stop it."""
        return None

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None) -> None:
        """The trial finished (by itself, by a stop condition, or stopped by this scheduler)."""

    def on_trial_remove(self, trial_id: str) -> None:
        """The trial failed for good."""

    # ------------------------------------------------------------------ helpers
    def score(self, result: Mapping[str, Any]) -> float | None:
        """The metric, higher-is-better, or None when the result lacks it."""
        value = result.get(self.metric) if self.metric else None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return None
        value = float(value)
        if value != value:  # NaN
            return None
        return -value if self.mode == "min" else value

    def time(self, result: Mapping[str, Any]) -> float | None:
        t = result.get(self.time_attr)
        return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


class FIFOScheduler(TrialScheduler):
    """Runs every trial to its stop condition."""

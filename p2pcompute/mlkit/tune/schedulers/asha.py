"""Asynchronous successive halving (ASHA) and asynchronous HyperBand.

Theory of operation (Li et al., "A System for Massively Parallel Hyperparameter Tuning", 2020): a bracket
has rungs at `grace_period * reduction_factor**k` (in `time_attr` units) below `max_t`. When a trial first
reaches a rung, its score is compared with the scores earlier trials recorded at that rung: it continues
only if it is in the top `1/reduction_factor` of them (at or above their `1 - 1/rf` quantile), then records
its own score there. No trial ever waits for others, so no worker idles; a trial is stopped at `max_t`.
HyperBand runs several such brackets with growing grace periods (less aggressive stopping) and assigns trials
to brackets in turn, hedging against a grace period that is too short for the problem.
"""

from __future__ import annotations

import math

import numpy as np

from .base import CONTINUE, STOP, TrialScheduler

__all__ = ["ASHAScheduler", "AsyncHyperBandScheduler", "HyperBandScheduler"]


class _Bracket:
    def __init__(self, min_t: float, max_t: float, reduction_factor: float):
        milestones = []
        t = min_t
        while t < max_t:
            milestones.append(t)
            t *= reduction_factor
        self.rf = reduction_factor
        # milestone -> {trial_id: score}; highest milestone first so a trial that skipped rungs is judged
        # at the highest one it has reached.
        self.rungs: list[tuple[float, dict[str, float]]] = [(m, {}) for m in reversed(milestones)]

    def cutoff(self, recorded: dict[str, float]) -> float | None:
        if not recorded:
            return None
        return float(np.percentile(list(recorded.values()), (1 - 1 / self.rf) * 100))

    def on_result(self, trial_id: str, t: float, score: float) -> str:
        for milestone, recorded in self.rungs:
            if t < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            recorded[trial_id] = score
            if cutoff is not None and score < cutoff:
                return STOP
            break
        return CONTINUE


class AsyncHyperBandScheduler(TrialScheduler):
    """`max_t`: a trial's budget in `time_attr` units; `grace_period`: the first rung; `reduction_factor`:
    keep the top 1/rf at each rung; `brackets`: how many brackets (1 = ASHA)."""

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None,
                 max_t: float = 100, grace_period: float = 1, reduction_factor: float = 4, brackets: int = 1):
        super().__init__(metric, mode, time_attr)
        if not grace_period > 0:
            raise ValueError(f"grace_period must be > 0, got {grace_period}")
        if not max_t >= grace_period:
            raise ValueError(f"max_t ({max_t}) must be >= grace_period ({grace_period})")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        if not isinstance(brackets, int) or brackets < 1:
            raise ValueError(f"brackets must be an int >= 1, got {brackets!r}")
        self.max_t = max_t
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.brackets = [_Bracket(grace_period * reduction_factor ** s, max_t, reduction_factor)
                         for s in range(brackets)]
        self.assignment: dict[str, int] = {}
        self._next_bracket = 0

    def needs_metric(self) -> bool:
        return True

    def on_trial_add(self, trial_id, config) -> None:
        if trial_id not in self.assignment:
            self.assignment[trial_id] = self._next_bracket
            self._next_bracket = (self._next_bracket + 1) % len(self.brackets)

    def decision_points(self, trial_id):
        # Rungs are in time_attr units; they are iterations only when time_attr counts reports.
        if self.time_attr != "training_iteration":
            return None
        self.on_trial_add(trial_id, {})
        rungs = [m for m, _ in self.brackets[self.assignment[trial_id]].rungs]
        return {"at": sorted({int(math.ceil(m)) for m in rungs + [self.max_t]})}

    def on_trial_result(self, trial_id, result):
        t = self.time(result)
        if t is None:
            return CONTINUE
        if t >= self.max_t:
            return STOP
        score = self.score(result)
        if score is None:
            return CONTINUE
        self.on_trial_add(trial_id, {})
        return self.brackets[self.assignment[trial_id]].on_result(trial_id, t, score)

    def rung_sizes(self) -> list[dict[float, int]]:
        """How many trials each rung of each bracket has recorded (for progress and tests)."""
        return [{m: len(r) for m, r in b.rungs} for b in self.brackets]


class ASHAScheduler(AsyncHyperBandScheduler):
    """ASHA: one bracket of asynchronous successive halving."""

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None,
                 max_t: float = 100, grace_period: float = 1, reduction_factor: float = 4, brackets: int = 1):
        super().__init__(time_attr, metric, mode, max_t, grace_period, reduction_factor, brackets)


class HyperBandScheduler(AsyncHyperBandScheduler):
    """HyperBand, in its asynchronous form: as many brackets as fit between grace_period and max_t
    (`s_max + 1` with `s_max = floor(log_rf(max_t / grace_period))`) unless `brackets` is given."""

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None,
                 max_t: float = 81, grace_period: float = 1, reduction_factor: float = 3, brackets: int | None = None):
        if brackets is None:
            if not (grace_period > 0 and max_t >= grace_period and reduction_factor > 1):
                brackets = 1  # the base class reports which argument is wrong
            else:
                brackets = int(math.floor(math.log(max_t / grace_period, reduction_factor) + 1e-9)) + 1
        super().__init__(time_attr, metric, mode, max_t, grace_period, reduction_factor, brackets)

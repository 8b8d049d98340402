"""Median stopping: stop a trial whose best score so far is below the median of the other trials'
running averages at the same time (Golovin et al., "Google Vizier", 2017).

A trial is judged only after `grace_period` (in `time_attr` units) and once at least `min_samples_required`
other trials have results up to that time.
"""

from __future__ import annotations

import numpy as np

from .base import CONTINUE, STOP, TrialScheduler

__all__ = ["MedianStoppingRule"]


class MedianStoppingRule(TrialScheduler):
    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None,
                 grace_period: float = 1, min_samples_required: int = 3):
        super().__init__(metric, mode, time_attr)
        if grace_period < 0 or min_samples_required < 1:
            raise ValueError("grace_period must be >= 0 and min_samples_required >= 1")
        self.grace_period = grace_period
        self.min_samples_required = min_samples_required
        self.history: dict[str, list[tuple[float, float]]] = {}  # trial -> [(time, score)]

    def needs_metric(self) -> bool:
        return True

    def on_trial_result(self, trial_id, result):
        t, score = self.time(result), self.score(result)
        if t is None or score is None:
            return CONTINUE
        self.history.setdefault(trial_id, []).append((t, score))
        if t < self.grace_period:
            return CONTINUE
        means = []
        for other, points in self.history.items():
            if other == trial_id:
                continue
            upto = [s for (tt, s) in points if tt <= t]
            if upto:
                means.append(float(np.mean(upto)))
        if len(means) < self.min_samples_required:
            return CONTINUE
        best = max(s for _, s in self.history[trial_id])
        return STOP if best < float(np.median(means)) else CONTINUE

"""`Result` and `ResultGrid`: what `Tuner.fit()` returns, built from the files on disk.

A `ResultGrid` can also be opened from an experiment directory alone (`ResultGrid.from_path`), with no
cluster: results are plain files.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator

from ..common import Checkpoint
from .storage import ERROR, ExperimentStorage, Trial, flatten

__all__ = ["Result", "ResultGrid"]


@dataclasses.dataclass
class Result:
    trial_id: str
    config: dict
    metrics: dict                 # the last result
    path: str                     # the trial's directory
    status: str
    checkpoint: Checkpoint | None
    error: str | None
    num_failures: int

    @property
    def metrics_history(self) -> list[dict]:
        """Every report of the trial, in order (read from its result.json)."""
        return ExperimentStorage(os.path.dirname(self.path)).read_results(self.trial_id)

    @property
    def metrics_dataframe(self):
        import pandas as pd
        return pd.DataFrame([flatten(r) for r in self.metrics_history])


def _mode_check(metric, mode):
    if metric is None or mode not in ("min", "max"):
        raise ValueError("get_best_result needs a metric and a mode ('min' or 'max'): pass them here or "
                         "in TuneConfig")


class ResultGrid:
    def __init__(self, path: str, trials: list[Trial], metric: str | None = None, mode: str | None = None):
        self.experiment_path = path
        self._metric, self._mode = metric, mode
        self._results = [Result(t.trial_id, t.config, t.last_result or {}, os.path.join(path, t.trial_id),
                                t.status, Checkpoint.from_directory(t.checkpoint_path)
                                if t.checkpoint_path and os.path.isdir(t.checkpoint_path) else None,
                                t.error if t.status == ERROR else None, t.num_failures) for t in trials]

    @classmethod
    def from_path(cls, path: str, metric: str | None = None, mode: str | None = None) -> "ResultGrid":
        storage = ExperimentStorage(path)
        state = storage.load_state()
        return cls(storage.path, [Trial.from_state(d) for d in state["trials"]],
                   metric or state.get("metric"), mode or state.get("mode"))

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, i: int) -> Result:
        return self._results[i]

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    @property
    def errors(self) -> list[tuple[str, str]]:
        """(trial_id, traceback text) of the trials that failed for good."""
        return [(r.trial_id, r.error) for r in self._results if r.error]

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def num_terminated(self) -> int:
        return sum(r.status == "TERMINATED" for r in self._results)

    def get_best_result(self, metric: str | None = None, mode: str | None = None, scope: str = "last") -> Result:
        """The trial whose `metric` is best: at its last report (`scope="last"`) or over all its reports
        (`scope="all"`). Trials without the metric are skipped."""
        metric, mode = metric or self._metric, mode or self._mode
        _mode_check(metric, mode)
        if scope not in ("last", "all"):
            raise ValueError(f"scope must be 'last' or 'all', got {scope!r}")
        best, best_value = None, None
        for r in self._results:
            values = [r.metrics.get(metric)] if scope == "last" else [h.get(metric) for h in r.metrics_history]
            values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v)]
            if not values:
                continue
            v = min(values) if mode == "min" else max(values)
            if best_value is None or (v < best_value if mode == "min" else v > best_value):
                best, best_value = r, v
        if best is None:
            raise ValueError(f"no trial reported a numeric {metric!r}")
        return best

    def rows(self) -> list[dict]:
        """One plain dict per trial: its last metrics, `config/...` columns, status, error and path."""
        out = []
        for r in self._results:
            row: dict[str, Any] = {"trial_id": r.trial_id}
            row.update({k: v for k, v in flatten(r.metrics).items() if k != "trial_id"})
            row.update({f"config/{k}": v for k, v in flatten(r.config).items()})
            row.update({"status": r.status, "num_failures": r.num_failures, "error": r.error, "logdir": r.path})
            out.append(row)
        return out

    def get_dataframe(self, filter_metric: str | None = None, filter_mode: str | None = None):
        """A pandas DataFrame of `rows()` (a list of dicts when pandas is not installed). With
        `filter_metric`/`filter_mode`, each trial's best report instead of its last."""
        rows = self.rows()
        if filter_metric:
            _mode_check(filter_metric, filter_mode)
            for row, r in zip(rows, self._results):
                hist = [h for h in r.metrics_history if isinstance(h.get(filter_metric), (int, float))]
                if hist:
                    pick = (min if filter_mode == "min" else max)(hist, key=lambda h: h[filter_metric])
                    row.update({k: v for k, v in flatten(pick).items() if k != "trial_id"})
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"ResultGrid({len(self)} trials, {self.num_terminated} terminated, {self.num_errors} errors)"

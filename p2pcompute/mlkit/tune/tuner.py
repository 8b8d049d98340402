"""`Tuner` and `TuneConfig`: what a user builds, and the source of new trials' configs.

`Tuner.fit()` hands the experiment to the driver loop (`driver.py`); `Tuner.restore(path, trainable)` rebuilds
a Tuner from the files an earlier (possibly killed) driver left under `path`, with the searcher and scheduler
as they were at its last save.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
import uuid
from typing import Any, Mapping

import numpy as np

import p2pcompute as p2p

from ..common import RunConfig
from .result_grid import ResultGrid
from .schedulers.base import FIFOScheduler, TrialScheduler
from .search.searcher import BasicVariantGenerator, Searcher, check_mode, grid_leaves
from .spaces import flatten_space, resolve
from .storage import ERROR, PENDING, RUNNING, ExperimentStorage, Trial
from .trainable import as_function

__all__ = ["Tuner", "TuneConfig"]

@dataclasses.dataclass
class TuneConfig:
    """`metric`/`mode`: what to optimise ("min" or "max"). `num_samples`: configs drawn (each grid point is
    tried that many times). `max_concurrent_trials`: trials running at once (default: as many as the
    cluster's CPUs fit). `search_alg`: a `tune.search` searcher (random by default). `scheduler`: a
    `tune.schedulers` scheduler (FIFO by default). `time_budget_s`: stop the experiment after that long.
    `reuse_actors`: run successive trials on the same actor when their resource requests match.
    `seed`: seeds the default random search and the sampling of constants-free domains."""

    metric: str | None = None
    mode: str | None = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    search_alg: Searcher | None = None
    scheduler: TrialScheduler | None = None
    time_budget_s: float | None = None
    reuse_actors: bool = True
    seed: int | None = None

    def __post_init__(self):
        check_mode(self.mode)
        if (self.metric is None) != (self.mode is None):
            raise ValueError("TuneConfig needs both metric and mode, or neither")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or \
                (self.num_samples < 1 and self.num_samples != -1):
            raise ValueError(f"num_samples must be an int >= 1 (or -1: until the time budget ends), "
                             f"got {self.num_samples!r}")
        if self.num_samples == -1 and self.time_budget_s is None:
            raise ValueError("num_samples=-1 (sample forever) needs a time_budget_s")
        if self.max_concurrent_trials is not None and (not isinstance(self.max_concurrent_trials, int)
                                                       or self.max_concurrent_trials < 1):
            raise ValueError(f"max_concurrent_trials must be an int >= 1, got {self.max_concurrent_trials!r}")
        if self.search_alg is not None and not isinstance(self.search_alg, Searcher):
            raise TypeError(f"search_alg must be a tune.search searcher, got {type(self.search_alg).__name__}")
        if self.scheduler is not None and not isinstance(self.scheduler, TrialScheduler):
            raise TypeError(f"scheduler must be a tune.schedulers scheduler, got {type(self.scheduler).__name__}")


class _ConfigSource:
    """Configs for new trials: `num_samples` rounds over every grid point, the searcher picking the values
    of the other domains. Pure; pickled with the experiment state so a restore continues where it was."""

    def __init__(self, space: Mapping, searcher: Searcher, num_samples: int, seed: int | None):
        self.space = dict(space)
        self.searcher = searcher
        self.num_samples = num_samples
        grid = grid_leaves(space)
        self.grid_paths = [path for path, _ in grid]
        self.grid_points = list(itertools.product(*[leaf.values for _, leaf in grid])) or [()]
        self.index = 0
        self.finished = False
        self.rng = np.random.default_rng(seed)

    @property
    def total(self) -> int | None:
        return None if self.num_samples == -1 else self.num_samples * len(self.grid_points)

    def next(self, trial_id: str) -> dict | None:
        """A config, or None when nothing can be suggested now (`finished` tells whether ever again)."""
        if self.finished:
            return None
        if self.total is not None and self.index >= self.total:
            self.finished = True
            return None
        values = self.searcher.suggest(trial_id)
        if values == Searcher.FINISHED:
            self.finished = True
            return None
        if values is None:
            return None
        point = self.grid_points[self.index % len(self.grid_points)]
        self.index += 1
        picks = dict(values)
        picks.update(zip(self.grid_paths, point))
        return resolve(self.space, picks, self.rng)


class Tuner:
    """Runs `trainable` over `param_space`; see the module docstring and docs/mlkit/tune.md."""

    def __init__(self, trainable: Any, *, param_space: Mapping | None = None,
                 tune_config: TuneConfig | None = None, run_config: RunConfig | None = None,
                 _restored: dict | None = None):
        as_function(trainable)  # a clear TypeError now rather than in every trial
        self.trainable = trainable
        self.param_space = dict(param_space or {})
        flatten_space(self.param_space)
        self.tune_config = tune_config or TuneConfig()
        self.run_config = run_config or RunConfig()
        if not isinstance(self.tune_config, TuneConfig):
            raise TypeError("tune_config must be a tune.TuneConfig")
        if not isinstance(self.run_config, RunConfig):
            raise TypeError("run_config must be a tune.RunConfig")
        tc = self.tune_config
        self.scheduler = tc.scheduler or FIFOScheduler()
        self.scheduler.set_search_properties(tc.metric, tc.mode)
        if self.scheduler.needs_metric() and (self.scheduler.metric is None or self.scheduler.mode is None):
            raise ValueError(f"{type(self.scheduler).__name__} needs a metric and mode: set them in "
                             f"TuneConfig(metric=..., mode=...) or on the scheduler")
        searcher = tc.search_alg or BasicVariantGenerator(seed=tc.seed)
        searcher.set_search_properties(tc.metric, tc.mode, self.param_space)
        inner = getattr(searcher, "searcher", searcher)  # the searcher a ConcurrencyLimiter wraps
        if not isinstance(inner, BasicVariantGenerator) and (inner.metric is None or inner.mode is None):
            raise ValueError(f"{type(inner).__name__} needs a metric and mode: set them in TuneConfig")
        self.metric = tc.metric or self.scheduler.metric or searcher.metric
        self.mode = tc.mode or self.scheduler.mode or searcher.mode
        self.source = _ConfigSource(self.param_space, searcher, tc.num_samples, tc.seed)
        name = self.run_config.name or time.strftime("tune_%Y-%m-%d_%H-%M-%S") + f"_{uuid.uuid4().hex[:4]}"
        self.storage = ExperimentStorage(os.path.join(os.path.expanduser(os.fspath(self.run_config.storage_path)),
                                                      name))
        self.trials: list[Trial] = []
        self._restored = _restored

    # ------------------------------------------------------------------ restore
    @classmethod
    def can_restore(cls, path: str) -> bool:
        return ExperimentStorage.exists(path)

    @classmethod
    def restore(cls, path: str, trainable: Any, *, resume_errored: bool = False,
                param_space: Mapping | None = None) -> "Tuner":
        """The experiment saved under `path`, ready to `fit()` again: finished trials are kept, unfinished
        ones restart from their latest checkpoints (errored ones too with `resume_errored`), and new
        trials come from the searcher as saved."""
        path = os.path.abspath(os.path.expanduser(path))
        if not cls.can_restore(path):
            raise ValueError(f"{path!r} holds no experiment to restore (no tuner.pkl / experiment_state.pkl)")
        storage = ExperimentStorage(path)
        saved, state = storage.load_tuner(), storage.load_state()
        run_config = dataclasses.replace(saved["run_config"], name=os.path.basename(path),
                                         storage_path=os.path.dirname(path))
        tuner = cls(trainable, param_space=param_space or saved["param_space"], tune_config=saved["tune_config"],
                    run_config=run_config, _restored=state)
        tuner.source = state["source"]
        tuner.scheduler = state["scheduler"]
        trials = [Trial.from_state(d) for d in state["trials"]]
        for t in trials:
            if t.status == RUNNING or (resume_errored and t.status == ERROR):
                t.status = PENDING
                t.error = None
        tuner.trials = trials
        return tuner

    # ------------------------------------------------------------------ fit
    def fit(self) -> ResultGrid:
        if not p2p.is_initialized():
            p2p.init()
        if self._restored is None:
            self.storage.save_tuner({"param_space": self.param_space, "tune_config": self.tune_config,
                                     "run_config": self.run_config})
        from .driver import Driver
        Driver(self).run()
        return ResultGrid(self.storage.path, self.trials, self.metric, self.mode)



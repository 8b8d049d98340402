"""An adapter that lets any Optuna sampler drive the search (`pip install "p2pcompute[tune]"`).

Optuna's ask/tell interface fits the searcher interface directly: `suggest` asks a trial with the space's
distributions, `on_trial_complete` tells its value (or marks it failed). Optuna is imported on first use.
For resumable experiments the searcher pickles its finished (params, value) pairs rather than the study,
and replays them into a fresh study when unpickled.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..spaces import Categorical, Float, Integer, Normal, path_name
from .searcher import Searcher

__all__ = ["OptunaSearch"]


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError('OptunaSearch needs Optuna: pip install "p2pcompute[tune]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class OptunaSearch(Searcher):
    """`sampler`: any `optuna.samplers.BaseSampler` (TPE with `seed` by default)."""

    def __init__(self, metric: str | None = None, mode: str | None = None, *, sampler=None,
                 points_to_evaluate=None, seed: int | None = None):
        super().__init__(metric, mode, points_to_evaluate, seed)
        _optuna()
        self.sampler = sampler
        self.history: list[tuple[dict, float | None]] = []
        self._study = None
        self._live: dict[str, Any] = {}

    def _distributions(self):
        optuna = _optuna()
        d = {}
        for path, dom in self.space.items():
            name = path_name(path)
            if isinstance(dom, Float):
                d[name] = optuna.distributions.FloatDistribution(dom.lower, dom.upper, log=dom.log,
                                                                 step=None if dom.log else dom.q)
            elif isinstance(dom, Integer):
                d[name] = optuna.distributions.IntDistribution(dom.lower, dom.upper - 1, log=dom.log,
                                                               step=1 if dom.log else (dom.q or 1))
            elif isinstance(dom, Categorical):
                d[name] = optuna.distributions.CategoricalDistribution(list(range(len(dom.categories))))
            elif isinstance(dom, Normal):
                d[name] = optuna.distributions.FloatDistribution(dom.mean - 3 * dom.sd, dom.mean + 3 * dom.sd)
        return d

    def study(self):
        if self._study is None:
            optuna = _optuna()
            sampler = self.sampler or optuna.samplers.TPESampler(seed=self.seed)
            direction = "maximize" if self.mode == "max" else "minimize"
            self._study = optuna.create_study(direction=direction, sampler=sampler)
            dists = self._distributions()
            for params, value in self.history:
                state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
                self._study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                                value=value, state=state))
        return self._study

    def _suggest(self, trial_id: str) -> dict:
        trial = self.study().ask(self._distributions())
        self._live[trial_id] = trial
        values = {}
        for path, dom in self.space.items():
            v = trial.params[path_name(path)]
            values[path] = dom.categories[v] if isinstance(dom, Categorical) else v
        return values

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False):
        trial = self._live.pop(trial_id, None)
        if trial is None:
            return
        optuna = _optuna()
        value = None if (error or result is None) else result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.study().tell(trial, float(value))
            self.history.append((dict(trial.params), float(value)))
        else:
            self.study().tell(trial, state=optuna.trial.TrialState.FAIL)
            self.history.append((dict(trial.params), None))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_study"] = None  # rebuilt from history
        state["_live"] = {}     # unfinished trials are asked again after a restore
        return state

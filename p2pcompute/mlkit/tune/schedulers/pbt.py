"""Population based training (Jaderberg et al., 2017).

Theory of operation: every `perturbation_interval` (in `time_attr` units) of a trial, its latest score is
ranked against the population's latest scores. A trial in the bottom `quantile_fraction` *exploits*: it is
restarted from the checkpoint of a trial drawn from the top `quantile_fraction` (only trials that have a
checkpoint qualify) and *explores*: the donor's config with each mutated hyperparameter either resampled
(probability `resample_probability`) or nudged (a float/int multiplied by one of `perturbation_factors`, a
list value moved to a neighbouring entry). Other trials continue. Randomness comes only from `seed`.

The driver tells the scheduler whether a trial has a checkpoint through the `has_checkpoint` key of each
result it feeds in.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping

import numpy as np

from ..spaces import Domain, Float, Integer, flatten_space
from .base import CONTINUE, Exploit, TrialScheduler

__all__ = ["PopulationBasedTraining"]


class PopulationBasedTraining(TrialScheduler):
    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None,
                 perturbation_interval: float = 5, hyperparam_mutations: Mapping | None = None,
                 quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                 perturbation_factors: tuple[float, float] = (1.2, 0.8),
                 custom_explore_fn: Callable[[dict], dict] | None = None, seed: int | None = None):
        super().__init__(metric, mode, time_attr)
        if not hyperparam_mutations and custom_explore_fn is None:
            raise ValueError("PopulationBasedTraining needs hyperparam_mutations or custom_explore_fn")
        if not 0 < quantile_fraction <= 0.5:
            raise ValueError(f"quantile_fraction must be in (0, 0.5], got {quantile_fraction}")
        if not 0 <= resample_probability <= 1:
            raise ValueError(f"resample_probability must be in [0, 1], got {resample_probability}")
        if not perturbation_interval > 0:
            raise ValueError(f"perturbation_interval must be > 0, got {perturbation_interval}")
        self.perturbation_interval = perturbation_interval
        self.mutations = flatten_space(hyperparam_mutations or {})
        for path, spec in self.mutations.items():
            if not (isinstance(spec, (list, tuple, Domain)) or callable(spec)):
                raise TypeError(f"hyperparam_mutations[{'/'.join(map(str, path))}] must be a list, a search "
                                f"space domain or a callable, got {spec!r}")
        self.quantile_fraction = quantile_fraction
        self.resample_probability = resample_probability
        self.perturbation_factors = perturbation_factors
        self.custom_explore_fn = custom_explore_fn
        self.rng = np.random.default_rng(seed)
        self.configs: dict[str, dict] = {}
        self.latest: dict[str, float] = {}
        self.has_checkpoint: dict[str, bool] = {}
        self.last_perturbation: dict[str, float] = {}
        self.num_exploits = 0

    def needs_metric(self) -> bool:
        return True

    def on_trial_add(self, trial_id, config) -> None:
        self.configs[trial_id] = copy.deepcopy(dict(config))
        self.last_perturbation.setdefault(trial_id, 0.0)

    def decision_points(self, trial_id):
        if self.time_attr != "training_iteration" or self.perturbation_interval != int(self.perturbation_interval):
            return None
        return {"every": int(self.perturbation_interval)}

    def on_trial_complete(self, trial_id, result) -> None:
        # A finished trial still serves as a donor (its checkpoint stays), but is no longer ranked as a receiver.
        pass

    def on_trial_remove(self, trial_id) -> None:
        self.latest.pop(trial_id, None)

    def on_trial_result(self, trial_id, result):
        t, score = self.time(result), self.score(result)
        if score is not None:
            self.latest[trial_id] = score
        if "has_checkpoint" in result:
            self.has_checkpoint[trial_id] = bool(result["has_checkpoint"])
        if t is None or score is None:
            return CONTINUE
        if t - self.last_perturbation.get(trial_id, 0.0) < self.perturbation_interval:
            return CONTINUE
        self.last_perturbation[trial_id] = t
        ranked = sorted(self.latest, key=lambda k: self.latest[k])  # worst first
        n = int(math.ceil(len(ranked) * self.quantile_fraction))
        if len(ranked) < 2 or n < 1:
            return CONTINUE
        bottom, top = ranked[:n], ranked[-n:]
        if trial_id not in bottom or trial_id in top:
            return CONTINUE
        donors = [d for d in top if self.has_checkpoint.get(d) and d != trial_id]
        if not donors:
            return CONTINUE
        donor = donors[int(self.rng.integers(len(donors)))]
        new_config = self.explore(self.configs.get(donor, {}))
        self.configs[trial_id] = new_config
        self.num_exploits += 1
        return Exploit(donor, new_config)

    # ------------------------------------------------------------------ explore
    def explore(self, config: Mapping) -> dict:
        new = copy.deepcopy(dict(config))
        for path, spec in self.mutations.items():
            node = new
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = self._mutate(node.get(path[-1]), spec)
        if self.custom_explore_fn is not None:
            new = self.custom_explore_fn(new)
        return new

    def _mutate(self, value: Any, spec: Any) -> Any:
        resample = self.rng.random() < self.resample_probability
        if isinstance(spec, (list, tuple)):
            options = list(spec)
            if resample or value not in options:
                return options[int(self.rng.integers(len(options)))]
            i = options.index(value) + (1 if self.rng.random() < 0.5 else -1)
            return options[min(max(i, 0), len(options) - 1)]
        if isinstance(spec, Domain):
            if resample or not isinstance(value, (int, float)):
                return spec.sample(self.rng)
            factor = self.perturbation_factors[int(self.rng.integers(len(self.perturbation_factors)))]
            new = value * factor
            if isinstance(spec, (Float, Integer)):
                upper = spec.upper if isinstance(spec, Float) else spec.upper - 1
                new = min(max(new, spec.lower), upper)
            return int(round(new)) if isinstance(spec, Integer) else float(new)
        return spec()  # a callable: a fresh value

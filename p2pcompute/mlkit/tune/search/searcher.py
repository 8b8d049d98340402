"""The search algorithm interface, random search, and `ConcurrencyLimiter`.

A searcher is a pure decision object: the Tuner tells it the space (`set_search_properties`), asks it for
values (`suggest(trial_id)`), and tells it what happened (`on_trial_result`, `on_trial_complete`). It never
runs anything. Values are exchanged as flat dicts `{path: value}` over the space's `Domain` leaves (paths are
tuples of keys into the nested config); the Tuner adds constants, grid picks and `sample_from` values itself.

`suggest` answers a dict, `None` ("nothing now, ask again after a trial completes") or `Searcher.FINISHED`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..spaces import Domain, Function, GridSearch, Path, flatten_space

__all__ = ["Searcher", "BasicVariantGenerator", "RandomSearch", "ConcurrencyLimiter"]


def check_mode(mode: str | None) -> None:
    if mode not in (None, "min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


class Searcher:
    """Base class. Subclasses implement `_suggest` (and `on_trial_complete` to learn from results)."""

    FINISHED = "FINISHED"

    def __init__(self, metric: str | None = None, mode: str | None = None,
                 points_to_evaluate: list[Mapping] | None = None, seed: int | None = None):
        check_mode(mode)
        self.metric = metric
        self.mode = mode
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.space: dict[Path, Domain] = {}
        # Points the user wants tried first, as nested (possibly partial) configs.
        self._points = [dict(p) for p in (points_to_evaluate or [])]
        for p in self._points:
            if not isinstance(p, Mapping):
                raise TypeError(f"points_to_evaluate must be a list of dicts, got {p!r}")

    def set_search_properties(self, metric: str | None, mode: str | None, space: Mapping) -> None:
        """Called once by the Tuner: fills in metric and mode unless the searcher was given its own."""
        check_mode(mode)
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        self.space = {path: leaf for path, leaf in flatten_space(space).items()
                      if isinstance(leaf, Domain) and not isinstance(leaf, Function)}

    def suggest(self, trial_id: str) -> dict | None | str:
        if self._points:
            point = flatten_space(self._points.pop(0))
            values = {path: point[path] for path in self.space if path in point}
            missing = {path: dom for path, dom in self.space.items() if path not in values}
            values.update({path: dom.sample(self.rng) for path, dom in missing.items()})
            return values
        return self._suggest(trial_id)

    def _suggest(self, trial_id: str) -> dict | None | str:
        raise NotImplementedError

    def on_trial_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """An intermediate result (most searchers ignore these)."""

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False) -> None:
        """The trial ended: `result` is its last result (None if it never reported), `error` if it failed."""

    def _score(self, result: Mapping[str, Any] | None) -> float | None:
        """The result's metric oriented so that lower is better, or None if absent/not a number."""
        if result is None or self.metric is None:
            return None
        value = result.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return None
        value = float(value)
        if not np.isfinite(value):
            return None
        return -value if self.mode == "max" else value


class BasicVariantGenerator(Searcher):
    """Random search: each domain sampled independently (grid points are expanded by the Tuner)."""

    def _suggest(self, trial_id: str) -> dict:
        return {path: dom.sample(self.rng) for path, dom in self.space.items()}


RandomSearch = BasicVariantGenerator


class ConcurrencyLimiter(Searcher):
    """At most `max_concurrent` suggestions of `searcher` are live (suggested, not yet complete) at a time.

    Model-based searchers learn more per trial when fewer run blind at once; this caps that."""

    def __init__(self, searcher: Searcher, max_concurrent: int):
        if not isinstance(searcher, Searcher):
            raise TypeError(f"ConcurrencyLimiter wraps a Searcher, got {type(searcher).__name__}")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be an int >= 1, got {max_concurrent!r}")
        super().__init__()
        self.searcher = searcher
        self.max_concurrent = max_concurrent
        self.live: set[str] = set()

    def set_search_properties(self, metric, mode, space) -> None:
        self.searcher.set_search_properties(metric, mode, space)
        self.metric, self.mode, self.space = self.searcher.metric, self.searcher.mode, self.searcher.space

    def suggest(self, trial_id: str):
        if len(self.live) >= self.max_concurrent:
            return None
        values = self.searcher.suggest(trial_id)
        if isinstance(values, dict):
            self.live.add(trial_id)
        return values

    def on_trial_result(self, trial_id, result) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False) -> None:
        self.live.discard(trial_id)
        self.searcher.on_trial_complete(trial_id, result, error)


def grid_leaves(space: Mapping) -> list[tuple[Path, GridSearch]]:
    return [(path, leaf) for path, leaf in flatten_space(space).items() if isinstance(leaf, GridSearch)]

"""TPE (tree-structured Parzen estimator) search in numpy.

Theory of operation: after `n_initial_points` random trials, completed trials are split by their metric
into the best `gamma` fraction ("good") and the rest ("bad"). Each parameter gets two densities, l(x) over
good values and g(x) over bad ones: a mixture of Gaussians (one per observation, on the parameter's unit
scale, log scale for log domains) plus a flat prior component, or smoothed frequencies for a choice. The
searcher draws `n_candidates` points from l and proposes the one maximising sum over parameters of
log l(x) - log g(x), i.e. the point most likely to be good rather than bad (Bergstra et al., 2011).
Parameters are modelled independently, as in hyperopt. Everything is seeded through `seed`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..spaces import Categorical, Domain, Float, Integer, Normal, Path
from .searcher import Searcher

__all__ = ["TPESearch"]


class TPESearch(Searcher):
    """Model-based search. `gamma`: fraction of trials counted as good; `n_candidates`: draws from l(x)
    per suggestion; `n_initial_points`: random suggestions before the model is used."""

    def __init__(self, metric: str | None = None, mode: str | None = None, *, n_initial_points: int = 10,
                 gamma: float = 0.25, n_candidates: int = 24, points_to_evaluate=None, seed: int | None = None):
        super().__init__(metric, mode, points_to_evaluate, seed)
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        if n_initial_points < 1 or n_candidates < 1:
            raise ValueError("n_initial_points and n_candidates must be >= 1")
        self.gamma = gamma
        self.n_candidates = n_candidates
        self.n_initial_points = n_initial_points
        self.pending: dict[str, dict] = {}
        self.observations: list[tuple[dict, float]] = []

    def _suggest(self, trial_id: str) -> dict:
        if len(self.observations) < self.n_initial_points:
            values = {path: dom.sample(self.rng) for path, dom in self.space.items()}
        else:
            values = self._model_suggest()
        self.pending[trial_id] = values
        return values

    def suggest(self, trial_id: str):
        values = super().suggest(trial_id)
        if isinstance(values, dict):
            self.pending[trial_id] = values
        return values

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False):
        values = self.pending.pop(trial_id, None)
        score = self._score(result)
        if values is not None and score is not None and not error:
            self.observations.append((values, score))

    # ------------------------------------------------------------------ the model
    def _model_suggest(self) -> dict:
        ranked = sorted(self.observations, key=lambda o: o[1])
        n_good = min(max(1, int(math.ceil(self.gamma * len(ranked)))), 25)
        good = [v for v, _ in ranked[:n_good]]
        bad = [v for v, _ in ranked[n_good:]] or good
        total = np.zeros(self.n_candidates)
        columns: dict[Path, list] = {}
        for path, dom in self.space.items():
            if isinstance(dom, Categorical):
                cands, ratio = self._categorical(dom, [v[path] for v in good], [v[path] for v in bad])
            else:
                cands, ratio = self._numeric(dom, [v[path] for v in good], [v[path] for v in bad])
            columns[path] = cands
            total += ratio
        best = int(np.argmax(total))
        return {path: cands[best] for path, cands in columns.items()}

    def _categorical(self, dom: Categorical, good: list, bad: list):
        k = len(dom.categories)
        index = {repr(c): i for i, c in enumerate(dom.categories)}
        def probs(values):
            counts = np.ones(k)  # one pseudo-count each: an unseen category keeps a chance
            for v in values:
                counts[index.get(repr(v), 0)] += 1
            return counts / counts.sum()
        l, g = probs(good), probs(bad)
        picks = self.rng.choice(k, size=self.n_candidates, p=l)
        return [dom.categories[i] for i in picks], np.log(l[picks]) - np.log(g[picks])

    def _numeric(self, dom: Domain, good: list, bad: list):
        to_unit, from_unit = _unit_scale(dom)
        lg = _Parzen(np.array([to_unit(v) for v in good]))
        lb = _Parzen(np.array([to_unit(v) for v in bad]))
        cands = lg.sample(self.rng, self.n_candidates)
        return [from_unit(u) for u in cands], lg.log_pdf(cands) - lb.log_pdf(cands)


class _Parzen:
    """A mixture on [0, 1] of Gaussians truncated to [0, 1]: one per observation plus a wide prior (centre
    0.5, sigma 1). Each observation's sigma is the larger gap to its neighbours, clipped to
    [1/min(100, n+1), 1] so that a tight cluster of good points still explores around itself."""

    def __init__(self, points: np.ndarray):
        n = len(points)
        order = np.argsort(points)
        srt = np.concatenate(([0.0], points[order], [1.0]))
        gaps = np.maximum(srt[1:-1] - srt[:-2], srt[2:] - srt[1:-1])
        sig = np.empty(n)
        sig[order] = gaps
        sig = np.clip(sig, 1.0 / min(100, n + 1), 1.0)
        self.mus = np.append(points, 0.5)
        self.sigmas = np.append(sig, 1.0)
        self.weights = np.full(n + 1, 1.0 / (n + 1))
        # Probability mass each component keeps inside [0, 1] (the truncation's normaliser).
        self.mass = _ncdf((1 - self.mus) / self.sigmas) - _ncdf((0 - self.mus) / self.sigmas)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        comp = rng.choice(len(self.mus), size=size, p=self.weights)
        out = rng.normal(self.mus[comp], self.sigmas[comp])
        bad = (out < 0) | (out > 1)
        for _ in range(100):  # rejection keeps draws truncated-normal instead of piled on the edges
            if not bad.any():
                break
            out[bad] = rng.normal(self.mus[comp[bad]], self.sigmas[comp[bad]])
            bad = (out < 0) | (out > 1)
        return np.clip(out, 0.0, 1.0)

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        z = (x[:, None] - self.mus[None, :]) / self.sigmas[None, :]
        dens = np.exp(-0.5 * z * z) / (self.sigmas * math.sqrt(2 * math.pi) * self.mass)
        return np.log(dens @ self.weights + 1e-300)


def _ncdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def _unit_scale(dom: Domain):
    """Maps between a domain's values and [0, 1] (log scale for log domains)."""
    if isinstance(dom, Normal):
        lo, hi, log = dom.mean - 3 * dom.sd, dom.mean + 3 * dom.sd, False
    elif isinstance(dom, (Float, Integer)):
        lo, hi, log = dom.lower, dom.upper, dom.log
    else:
        raise TypeError(f"TPESearch cannot model {type(dom).__name__}")
    a, b = (math.log(lo), math.log(hi)) if log else (float(lo), float(hi))

    def to_unit(v):
        v = math.log(v) if log else float(v)
        return min(max((v - a) / (b - a), 0.0), 1.0)

    def from_unit(u):
        v = a + float(u) * (b - a)
        v = math.exp(v) if log else v
        if isinstance(dom, Integer):
            v = int(math.floor(v))
            if dom.q:
                v = int(round(v / dom.q) * dom.q)
            return min(max(v, dom.lower), dom.upper - 1)
        if dom.q:
            v = round(v / dom.q) * dom.q
        if isinstance(dom, Float):
            v = min(max(v, dom.lower), dom.upper)
        return float(v)

    return to_unit, from_unit

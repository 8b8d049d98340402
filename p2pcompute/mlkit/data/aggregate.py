"""Aggregations: `Count`, `Sum`, `Min`, `Max`, `Mean`, `Std`, for whole datasets and for groups.

Each aggregation has two vectorized forms. For a whole dataset, every block gives a small *partial state*
(`partial`) computed where the block lives; the driver merges states (`merge`) and finishes (`finish`).
For `groupby`, rows reach a reducer sorted by key; `grouped(values, starts)` computes all groups of that
reducer at once with `np.*.reduceat`. `Std` keeps (count, mean, M2) and merges them with Chan's formula,
so it is exact whatever the blocking; like Ray's `Std`, `ddof` defaults to 1.
"""

from __future__ import annotations

import numpy as np


class AggregateFn:
    """Base: `on` is the column (None for `Count`)."""

    label = "agg"

    def __init__(self, on: str | None = None, alias_name: str | None = None):
        self.on = on
        self.name = alias_name or (f"{self.label}({on})" if on else f"{self.label}()")

    def values(self, block: dict) -> np.ndarray:
        if self.on not in block:
            raise KeyError(f"{self.name}: no column {self.on!r}; the dataset has {sorted(block)}")
        return block[self.on]

    def partial(self, block: dict):
        raise NotImplementedError

    def merge(self, a, b):
        raise NotImplementedError

    def finish(self, state):
        return state

    def grouped(self, block: dict, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Count(AggregateFn):
    label = "count"

    def partial(self, block):
        return len(next(iter(block.values()))) if block else 0

    def merge(self, a, b):
        return a + b

    def grouped(self, block, starts, counts):
        return counts.astype(np.int64)


class Sum(AggregateFn):
    label = "sum"

    def partial(self, block):
        v = self.values(block)
        return v.sum(axis=0) if len(v) else None

    def merge(self, a, b):
        return b if a is None else a if b is None else a + b

    def finish(self, state):
        return 0 if state is None else state

    def grouped(self, block, starts, counts):
        return np.add.reduceat(self.values(block), starts, axis=0)


class Min(AggregateFn):
    label = "min"

    def partial(self, block):
        v = self.values(block)
        return v.min(axis=0) if len(v) else None

    def merge(self, a, b):
        return b if a is None else a if b is None else np.minimum(a, b)

    def grouped(self, block, starts, counts):
        return np.minimum.reduceat(self.values(block), starts, axis=0)


class Max(AggregateFn):
    label = "max"

    def partial(self, block):
        v = self.values(block)
        return v.max(axis=0) if len(v) else None

    def merge(self, a, b):
        return b if a is None else a if b is None else np.maximum(a, b)

    def grouped(self, block, starts, counts):
        return np.maximum.reduceat(self.values(block), starts, axis=0)


class Mean(AggregateFn):
    label = "mean"

    def partial(self, block):
        v = self.values(block)
        return (len(v), v.sum(axis=0, dtype=np.float64)) if len(v) else (0, 0.0)

    def merge(self, a, b):
        return a[0] + b[0], a[1] + b[1]

    def finish(self, state):
        return None if state[0] == 0 else state[1] / state[0]

    def grouped(self, block, starts, counts):
        return np.add.reduceat(self.values(block).astype(np.float64), starts, axis=0) / counts


class Std(AggregateFn):
    label = "std"

    def __init__(self, on: str | None = None, ddof: int = 1, alias_name: str | None = None):
        super().__init__(on, alias_name)
        self.ddof = ddof

    def partial(self, block):
        v = self.values(block).astype(np.float64)
        if not len(v):
            return (0, 0.0, 0.0)
        m = v.mean(axis=0)
        return (len(v), m, ((v - m) ** 2).sum(axis=0))

    def merge(self, a, b):
        na, ma, m2a = a
        nb, mb, m2b = b
        if na == 0:
            return b
        if nb == 0:
            return a
        n = na + nb
        delta = mb - ma
        return n, ma + delta * nb / n, m2a + m2b + delta ** 2 * na * nb / n

    def finish(self, state):
        n, _, m2 = state
        return None if n - self.ddof <= 0 else np.sqrt(m2 / (n - self.ddof))

    def grouped(self, block, starts, counts):
        v = self.values(block).astype(np.float64)
        sums = np.add.reduceat(v, starts, axis=0)
        means = sums / counts
        sq = np.add.reduceat((v - np.repeat(means, counts)) ** 2, starts, axis=0)
        denom = counts - self.ddof
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, np.sqrt(sq / np.maximum(denom, 1)), np.nan)


def partial_task(aggs: list, block: dict):
    return [a.partial(block) for a in aggs]


def combine(aggs: list, partials: list) -> list:
    states = None
    for p in partials:
        states = p if states is None else [a.merge(x, y) for a, x, y in zip(aggs, states, p)]
    if states is None:
        states = [a.partial({a.on: np.array([])} if a.on else {}) for a in aggs]
    return [a.finish(s) for a, s in zip(aggs, states)]

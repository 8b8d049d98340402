"""Observation normalisation (RLlib's "MeanStdFilter"): running statistics merged across workers.

Theory of operation. The learner owns the *global* running mean and variance of every observation seen so
far. Each iteration it sends them to the workers with the weights (in the same single broadcast); a worker
normalises with those frozen numbers — so the learner, which normalises the same raw observations the same
way, trains on exactly what the policy saw — and counts the raw observations it sees into a *delta*
`RunningStat` that comes back with its samples. The learner merges the deltas (Chan et al.'s parallel
variance formula, exact whatever the split) and the next iteration uses the new statistics. Normalised
values are clipped to +-10 so a rare huge observation cannot saturate the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIP = 10.0
FILTERS = ("NoFilter", "MeanStdFilter")


@dataclass
class RunningStat:
    """Count, mean and sum of squared deviations (M2) per dimension."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    @staticmethod
    def zeros(dim: int) -> "RunningStat":
        return RunningStat(0.0, np.zeros(dim), np.zeros(dim))

    def push(self, x: np.ndarray) -> None:
        """Add a batch of observations [B, dim]."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        self.merge(RunningStat(float(len(x)), x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).sum(axis=0)))

    def merge(self, other: "RunningStat") -> None:
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        if self.count < 2:
            return np.ones_like(self.mean)
        return np.maximum(np.sqrt(self.m2 / self.count), 1e-2)  # a constant dimension must not divide by ~0

    def state(self) -> dict:
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy()}

    @staticmethod
    def from_state(state: dict) -> "RunningStat":
        return RunningStat(float(state["count"]), np.array(state["mean"]), np.array(state["m2"]))


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.clip((x - mean) / std, -CLIP, CLIP)

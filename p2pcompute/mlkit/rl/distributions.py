"""Action distributions with their gradients: categorical (discrete actions) and diagonal Gaussian
(continuous actions, a state-independent learned log standard deviation).

Each distribution is stateless: it is built from the policy head's output for a batch and answers sampling,
log-probabilities and entropies, plus `backward(dlogp, dent)`: given d(loss)/d(log p(a)) and
d(loss)/d(entropy) per sample, the gradient with respect to the head's output (and, for the Gaussian, its
log standard deviation). Those formulas are what the finite-difference tests check.
"""

from __future__ import annotations

import numpy as np

_LOG_2PI = float(np.log(2.0 * np.pi))


class Categorical:
    """Softmax over `logits` [B, n]."""

    def __init__(self, logits: np.ndarray):
        self.logits = logits
        z = logits - logits.max(axis=1, keepdims=True)
        self.log_probs_all = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        self.probs = np.exp(self.log_probs_all)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        # Inverse-CDF sampling of a whole batch at once (one uniform per row).
        u = rng.random((self.probs.shape[0], 1))
        idx = (self.probs.cumsum(axis=1) < u).sum(axis=1)
        return np.minimum(idx, self.probs.shape[1] - 1)

    def mode(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    def logp(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, dtype=np.int64).reshape(-1)
        return self.log_probs_all[np.arange(a.shape[0]), a]

    def entropy(self) -> np.ndarray:
        return -(self.probs * self.log_probs_all).sum(axis=1)

    def backward(self, actions: np.ndarray, dlogp: np.ndarray, dent: np.ndarray) -> np.ndarray:
        """d(loss)/d(logits) [B, n]."""
        a = np.asarray(actions, dtype=np.int64).reshape(-1)
        onehot = np.zeros_like(self.probs)
        onehot[np.arange(a.shape[0]), a] = 1.0
        # d log p(a) / d logits = onehot(a) - p;  d H / d logits_j = -p_j (log p_j + H)
        dlogits = dlogp[:, None] * (onehot - self.probs)
        dlogits -= dent[:, None] * self.probs * (self.log_probs_all + self.entropy()[:, None])
        return dlogits


class DiagGaussian:
    """Independent normals with means `mean` [B, d] and log standard deviations `log_std` [d]."""

    def __init__(self, mean: np.ndarray, log_std: np.ndarray):
        self.mean = mean
        self.log_std = log_std
        self.std = np.exp(log_std)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self.mean + self.std * rng.standard_normal(self.mean.shape)

    def mode(self) -> np.ndarray:
        return self.mean

    def logp(self, actions: np.ndarray) -> np.ndarray:
        z = (np.asarray(actions, dtype=np.float64).reshape(self.mean.shape) - self.mean) / self.std
        return (-0.5 * z * z - self.log_std - 0.5 * _LOG_2PI).sum(axis=1)

    def entropy(self) -> np.ndarray:
        per_row = float((self.log_std + 0.5 + 0.5 * _LOG_2PI).sum())
        return np.full(self.mean.shape[0], per_row)

    def backward(self, actions: np.ndarray, dlogp: np.ndarray, dent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d(loss)/d(mean) [B, d], d(loss)/d(log_std) [d])."""
        z = (np.asarray(actions, dtype=np.float64).reshape(self.mean.shape) - self.mean) / self.std
        dmean = dlogp[:, None] * z / self.std
        # d log p / d log_std = z^2 - 1 per dimension;  d H / d log_std = 1 per dimension
        dlog_std = (dlogp[:, None] * (z * z - 1.0)).sum(axis=0) + dent.sum()
        return dmean, dlog_std

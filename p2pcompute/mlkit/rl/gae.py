"""Generalised advantage estimation (Schulman et al., 2016) over a [time, env] block of samples.

`dones[t, i]` means the episode of env i ended at step t, so nothing after it is bootstrapped into step t.
Episodes cut by a time limit (truncated, not terminated) are handled by the rollout worker, which adds
`gamma * V(final observation)` to the last reward before marking the step done: the estimate then treats
the cut as the end of a trajectory whose remaining value is the critic's guess, not zero.
"""

from __future__ import annotations

import numpy as np


def compute_gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_values: np.ndarray,
                gamma: float = 0.99, lambda_: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, value targets), each shaped like `rewards` ([T, N] or [T]).

    `last_values` is V of the observation after the last step of each env (used unless that step was done).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if rewards.shape != values.shape or np.shape(dones) != rewards.shape:
        raise ValueError(f"rewards {rewards.shape}, values {values.shape} and dones {np.shape(dones)} "
                         "must have the same [time, env] shape")
    not_done = 1.0 - np.asarray(dones, dtype=np.float64)
    adv = np.zeros_like(rewards)
    running = np.zeros_like(rewards[0])
    next_values = np.asarray(last_values, dtype=np.float64).reshape(rewards[0].shape)
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * next_values * not_done[t] - values[t]
        running = delta + gamma * lambda_ * not_done[t] * running
        adv[t] = running
        next_values = values[t]
    return adv, adv + values

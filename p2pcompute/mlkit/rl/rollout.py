"""Rollout workers: step a vector of environments with the current policy and return sample batches.

Theory of operation. A `RolloutWorker` owns `num_envs` environments and keeps them running between calls:
an episode may span several iterations, as in RLlib, so no steps are wasted on resets at iteration ends.
`sample(weights)` takes the weight vector (the driver passes one object-store ref to every worker, so each
machine maps the same bytes instead of receiving a copy per worker), steps all envs `fragment_length` times
with one batched forward pass per step, and post-processes on the worker — value bootstrap at truncation,
GAE — so the learner receives ready-to-train rows and spends its time on gradients only.

The class is plain Python: the driver runs it in-process (`num_env_runners=0`, or to evaluate) or as an
actor (`WorkerGroup` wraps it with `p2pcompute.remote`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields

import numpy as np

from p2pcompute.mlkit.rl.env import make_env
from p2pcompute.mlkit.rl.filters import FILTERS, RunningStat
from p2pcompute.mlkit.rl.gae import compute_gae
from p2pcompute.mlkit.rl.policy import Policy, PolicySpec


@dataclass
class SampleBatch:
    """Rows of experience, flattened time-major over the worker's envs, ready for a PPO update."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    logp: np.ndarray            # log-probability of the action under the policy that sampled it
    values: np.ndarray          # the critic's value of obs under that policy
    advantages: np.ndarray      # GAE
    value_targets: np.ndarray   # advantages + values: what the critic is trained towards
    episode_returns: np.ndarray = field(default_factory=lambda: np.zeros(0))  # episodes finished in this batch
    episode_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    worker_index: int = 0
    sample_time_s: float = 0.0
    obs_delta: RunningStat | None = None  # raw observations seen, for the learner's MeanStdFilter

    ROW_FIELDS = ("obs", "actions", "rewards", "dones", "logp", "values", "advantages", "value_targets")

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def env_steps(self) -> int:
        return len(self)

    def rows(self, idx: np.ndarray) -> dict:
        return {name: getattr(self, name)[idx] for name in self.ROW_FIELDS}

    @staticmethod
    def concat(batches: list["SampleBatch"]) -> "SampleBatch":
        if not batches:
            raise ValueError("no sample batches to concatenate")
        out = {f.name: np.concatenate([getattr(b, f.name) for b in batches])
               for f in fields(SampleBatch) if f.name not in ("worker_index", "sample_time_s", "obs_delta")}
        return SampleBatch(**out, worker_index=-1, sample_time_s=max(b.sample_time_s for b in batches))


class RolloutWorker:
    """`num_envs` environments stepped in lock-step by one policy; `sample()` returns a `SampleBatch`."""

    def __init__(self, env, env_config: dict | None, policy_spec: PolicySpec, *, num_envs: int = 1,
                 rollout_fragment_length: int = 200, gamma: float = 0.99, lambda_: float = 0.95,
                 worker_index: int = 0, seed: int = 0, observation_filter: str = "NoFilter"):
        if num_envs < 1 or rollout_fragment_length < 1:
            raise ValueError("num_envs and rollout_fragment_length must be at least 1")
        if observation_filter not in FILTERS:
            raise ValueError(f"observation_filter must be one of {FILTERS}, not {observation_filter!r}")
        self.track_obs = observation_filter == "MeanStdFilter"
        self.worker_index = worker_index
        self.envs = [make_env(env, env_config, worker_index, i) for i in range(num_envs)]
        self.policy = Policy(policy_spec)
        self.fragment_length = rollout_fragment_length
        self.gamma, self.lambda_ = gamma, lambda_
        self.rng = np.random.default_rng(seed)
        self.obs = np.stack([np.asarray(e.reset(seed=seed + i)[0]) for i, e in enumerate(self.envs)])
        self.ep_return = np.zeros(num_envs)
        self.ep_len = np.zeros(num_envs, dtype=np.int64)
        self.total_steps = 0

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> dict:
        """This worker's process id and the peer (node) it runs on."""
        import p2pcompute as p2p
        return {"pid": os.getpid(), "node_id": p2p.get_runtime_context().get_node_id()}

    def sample(self, weights, fragment_length: int | None = None) -> SampleBatch:
        """Step every env `fragment_length` times with `weights` (a weight vector, or a dict of "weights",
        "obs_mean", "obs_std" when observations are normalised) and return the batch."""
        t_start = time.perf_counter()
        if isinstance(weights, dict):
            self.policy.set_obs_filter(weights.get("obs_mean"), weights.get("obs_std"))
            weights = weights["weights"]
        self.policy.set_weights(weights)
        delta = RunningStat.zeros(self.policy.spec.obs_dim) if self.track_obs else None
        T, N = fragment_length or self.fragment_length, len(self.envs)
        obs_buf = np.zeros((T, N, *self.obs.shape[1:]), dtype=self.obs.dtype)
        act_shape = () if self.policy.spec.action_kind == "discrete" else (self.policy.spec.action_dim,)
        act_buf = np.zeros((T, N, *act_shape), dtype=np.int64 if not act_shape else np.float64)
        rew, done, logp, val = (np.zeros((T, N)) for _ in range(4))
        finished_returns, finished_lengths = [], []
        for t in range(T):
            actions, lp, v = self.policy.compute_actions(self.obs, self.rng)
            env_actions = self.policy.to_env(actions)
            obs_buf[t], act_buf[t], logp[t], val[t] = self.obs, actions, lp, v
            if delta is not None:
                delta.push(self.obs)
            next_obs = []
            truncated_at, truncated_obs = [], []
            for i, e in enumerate(self.envs):
                o, r, terminated, truncated, _ = e.step(env_actions[i])
                self.ep_return[i] += r
                self.ep_len[i] += 1
                rew[t, i] = r
                if terminated or truncated:
                    done[t, i] = 1.0
                    finished_returns.append(self.ep_return[i])
                    finished_lengths.append(self.ep_len[i])
                    self.ep_return[i], self.ep_len[i] = 0.0, 0
                    if truncated and not terminated:
                        truncated_at.append(i)
                        truncated_obs.append(o)
                    o, _ = e.reset()
                next_obs.append(np.asarray(o))
            if truncated_at:
                # A time limit is not a terminal state: bootstrap with the critic's value of where we stopped.
                v_final, _ = self.policy.value(self.policy.preprocess(np.stack(truncated_obs)))
                rew[t, truncated_at] += self.gamma * v_final
            self.obs = np.stack(next_obs)
        last_values, _ = self.policy.value(self.policy.preprocess(self.obs))
        adv, targets = compute_gae(rew, val, done, last_values, self.gamma, self.lambda_)
        self.total_steps += T * N
        flat = lambda a: a.reshape(T * N, *a.shape[2:])  # noqa: E731 - time-major rows
        return SampleBatch(flat(obs_buf), flat(act_buf), flat(rew), flat(done), flat(logp), flat(val),
                           flat(adv), flat(targets), np.array(finished_returns, dtype=np.float64),
                           np.array(finished_lengths, dtype=np.int64), self.worker_index,
                           time.perf_counter() - t_start, delta)

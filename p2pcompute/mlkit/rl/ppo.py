"""Proximal policy optimisation (Schulman et al., 2017): the clipped surrogate objective, trained for a few
epochs of minibatches on each iteration's samples.

Theory of operation. One iteration: the learner's weights go into the object store *once* (`p2p.put`), every
rollout worker samples `rollout_fragment_length` steps of each of its envs with them and post-processes
(GAE) on its own CPU, the driver concatenates what came back and runs `num_epochs` passes of shuffled
minibatches of Adam on the loss below. A worker lost mid-iteration is replaced; the iteration trains on the
others' samples.

The loss on a minibatch, with r = exp(logp - logp_old) and advantages A normalised within the minibatch:

    L = -mean(min(r A, clip(r, 1-eps, 1+eps) A)) + vf_loss_coeff * 0.5 mean((V - V_target)^2)
        - entropy_coeff * mean(H)

`ppo_loss` returns it with its exact gradient with respect to the flat weight vector.
"""

from __future__ import annotations

import math

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.rl.algorithm import Algorithm, AlgorithmConfig
from p2pcompute.mlkit.rl.filters import RunningStat
from p2pcompute.mlkit.rl.nets import Adam, clip_by_global_norm
from p2pcompute.mlkit.rl.policy import Policy
from p2pcompute.mlkit.rl.rollout import RolloutWorker, SampleBatch
from p2pcompute.mlkit.rl.worker_group import WorkerGroup


def ppo_loss(policy: Policy, weights: np.ndarray, rows: dict, *, clip_param: float = 0.2,
             vf_loss_coeff: float = 0.5, entropy_coeff: float = 0.0,
             normalize_advantages: bool = True) -> tuple[float, np.ndarray, dict]:
    """(loss, d loss / d weights, stats) for a minibatch `rows` (SampleBatch.rows())."""
    x = policy.preprocess(rows["obs"])
    n = x.shape[0]
    adv = np.asarray(rows["advantages"], dtype=np.float64)
    if normalize_advantages and n > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    dist, pi_cache = policy.distribution(x, weights)
    logp = dist.logp(rows["actions"])
    ratio = np.exp(logp - rows["logp"])
    clipped = np.clip(ratio, 1.0 - clip_param, 1.0 + clip_param)
    surr = np.minimum(ratio * adv, clipped * adv)
    entropy = dist.entropy()
    values, vf_cache = policy.value(x, weights)
    err = values - rows["value_targets"]
    pi_loss = -surr.mean()
    vf_loss = 0.5 * float(np.mean(err * err))
    loss = pi_loss + vf_loss_coeff * vf_loss - entropy_coeff * float(entropy.mean())

    # Gradient. The min picks the unclipped term where r A <= clip(r) A; only that term depends on the
    # weights (the clipped one is flat in r), and d(r A)/d logp = r A.
    unclipped_active = ratio * adv <= clipped * adv
    dlogp = -np.where(unclipped_active, ratio * adv, 0.0) / n
    dent = np.full(n, -entropy_coeff / n)
    grad = np.zeros_like(weights)
    if policy.spec.action_kind == "discrete":
        dout = dist.backward(rows["actions"], dlogp, dent)
    else:
        dout, dlog_std = dist.backward(rows["actions"], dlogp, dent)
        grad[policy.num_params - policy.spec.action_dim:] += dlog_std
    policy.pi.backward(weights, pi_cache, dout, grad)
    policy.vf.backward(weights, vf_cache, (vf_loss_coeff * err / n)[:, None], grad)
    log_ratio = logp - rows["logp"]
    stats = {"policy_loss": float(pi_loss), "vf_loss": vf_loss, "entropy": float(entropy.mean()),
             "kl": float(np.mean(ratio - 1.0 - log_ratio)),  # the low-variance estimator of KL(old || new)
             "clip_fraction": float(np.mean(np.abs(ratio - 1.0) > clip_param))}
    return float(loss), grad, stats


def scheduled(value, step: int) -> float:
    """A float, or a piecewise-linear schedule [[step, value], ...] (RLlib's form) evaluated at `step`."""
    if isinstance(value, (int, float)):
        return float(value)
    points = sorted((int(s), float(v)) for s, v in value)
    steps, values = zip(*points)
    return float(np.interp(step, steps, values))


class PPOConfig(AlgorithmConfig):
    """PPO settings; `.training()` takes the names below (RLlib's names and meanings)."""

    TRAINING_DEFAULTS = {
        "lr": 3e-4,                  # or a schedule [[env_steps, lr], ...]
        "gamma": 0.99,
        "lambda_": 0.95,
        "clip_param": 0.2,
        "vf_loss_coeff": 0.5,
        "entropy_coeff": 0.0,
        "num_epochs": 10,
        "minibatch_size": 64,
        "train_batch_size": 1000,
        "grad_clip": 0.5,
        "normalize_advantages": True,
    }

    def validate(self) -> None:
        super().validate()
        s = self._settings
        for name in ("num_epochs", "minibatch_size", "train_batch_size"):
            if not isinstance(s[name], int) or s[name] < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {s[name]!r}")
        if not 0 < s["clip_param"] < 1:
            raise ValueError(f"clip_param must be between 0 and 1, not {s['clip_param']!r}")
        if not (0 <= s["gamma"] <= 1 and 0 <= s["lambda_"] <= 1):
            raise ValueError("gamma and lambda_ must be between 0 and 1")
        if scheduled(s["lr"], 0) <= 0:
            raise ValueError(f"lr must be positive, not {s['lr']!r}")


class PPO(Algorithm):
    config_class = PPOConfig

    def setup(self) -> None:
        c = self.config
        runners = max(1, c.num_env_runners)
        self.fragment_length = (c.rollout_fragment_length if c.rollout_fragment_length != "auto"
                                else math.ceil(c.train_batch_size / (runners * c.num_envs_per_env_runner)))
        self.adam = Adam(self.policy.num_params, lr=scheduled(c.lr, 0))
        self.rng = np.random.default_rng(self.seed + 1)

        def worker_args(index: int, generation: int):
            return ((c.env, c.env_config, self.policy_spec),
                    dict(num_envs=c.num_envs_per_env_runner, rollout_fragment_length=self.fragment_length,
                         gamma=c.gamma, lambda_=c.lambda_, worker_index=index,
                         seed=self.seed + 1000 * index + 100_003 * generation,
                         observation_filter=c.observation_filter))

        self.obs_stat = (RunningStat.zeros(self.policy_spec.obs_dim) if c.observation_filter == "MeanStdFilter"
                         else None)
        if self.obs_stat is not None and self.policy_spec.obs_discrete:
            raise ValueError("observation_filter='MeanStdFilter' needs Box observations; this env's are Discrete")

        self.local_worker = None
        self.workers = None
        if c.num_env_runners == 0:
            args, kwargs = worker_args(0, 0)
            self.local_worker = RolloutWorker(*args, **kwargs)
        else:
            if not p2p.is_initialized():
                raise RuntimeError("num_env_runners > 0 runs rollout workers as actors: call p2pcompute.init() "
                                   "first, or set .env_runners(num_env_runners=0) to sample in this process")
            self.workers = WorkerGroup(RolloutWorker, c.num_env_runners, worker_args,
                                       {"num_cpus": c.num_cpus_per_env_runner}, restart=c.restart_failed_env_runners)

    def sample(self) -> list[SampleBatch]:
        """One round of sampling with the current weights: a batch per worker that answered."""
        payload = self.policy.weights
        if self.obs_stat is not None:
            payload = {"weights": self.policy.weights, "obs_mean": self.policy.obs_mean, "obs_std": self.policy.obs_std}
        if self.local_worker is not None:
            return [self.local_worker.sample(payload)]
        weights_ref = p2p.put(payload)  # the one broadcast of this iteration
        for _ in range(self.config.max_failed_sample_rounds):
            results = self.workers.call("sample", lambda index: (weights_ref,), self.config.sample_timeout_s)
            if results:
                return [results[i] for i in sorted(results)]
        raise RuntimeError(f"every rollout worker was lost in {self.config.max_failed_sample_rounds} rounds "
                           "in a row; is the cluster shrinking?")

    def training_step(self) -> dict:
        c = self.config
        batches = self.sample()
        batch = SampleBatch.concat(batches)
        self.num_env_steps_sampled += len(batch)
        for b in batches:
            self.record_episodes(b.episode_returns, b.episode_lengths)
        self.adam.lr = scheduled(c.lr, self.num_env_steps_sampled)
        weights = self.policy.get_weights()
        totals: dict[str, float] = {}
        updates = 0
        n = len(batch)
        for _ in range(c.num_epochs):
            perm = self.rng.permutation(n)
            for start in range(0, n, c.minibatch_size):
                idx = perm[start:start + c.minibatch_size]
                _, grad, stats = ppo_loss(self.policy, weights, batch.rows(idx), clip_param=c.clip_param,
                                          vf_loss_coeff=c.vf_loss_coeff, entropy_coeff=c.entropy_coeff,
                                          normalize_advantages=c.normalize_advantages)
                grad, stats["grad_norm"] = clip_by_global_norm(grad, c.grad_clip)
                weights = self.adam.step(weights, grad)
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                updates += 1
        self.policy.set_weights(weights)
        if self.obs_stat is not None:
            # The update used the statistics the workers sampled with; the next iteration uses the merged ones.
            for b in batches:
                if b.obs_delta is not None:
                    self.obs_stat.merge(b.obs_delta)
            self.policy.set_obs_filter(self.obs_stat.mean, self.obs_stat.std)
        learner = {k: v / max(updates, 1) for k, v in totals.items()}
        learner["lr"] = self.adam.lr
        learner["num_updates"] = updates
        return {
            "num_env_steps_sampled_this_iter": n,
            "num_healthy_env_runners": len(self.workers.workers) if self.workers else 0,
            "num_env_runner_restarts": self.workers.num_replaced if self.workers else 0,
            "num_env_runner_batches": len(batches),
            "env_runners": {"sample_time_s": max(b.sample_time_s for b in batches)},
            "learners": learner,
        }

    def extra_state(self) -> dict:
        return {"adam": self.adam.state(), "rng": self.rng.bit_generator.state,
                "obs_stat": None if self.obs_stat is None else self.obs_stat.state()}

    def load_extra_state(self, state: dict) -> None:
        self.adam.load(state["adam"])
        self.rng.bit_generator.state = state["rng"]
        if self.obs_stat is not None and state.get("obs_stat") is not None:
            self.obs_stat = RunningStat.from_state(state["obs_stat"])
            self.policy.set_obs_filter(self.obs_stat.mean, self.obs_stat.std)

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()


PPOConfig.algo_class = PPO

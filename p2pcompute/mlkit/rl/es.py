"""Evolution strategies (Salimans et al., 2017), the showcase of the original Ray paper.

Theory of operation. A large table of Gaussian noise is made once by the driver and placed in the object
store once (`p2p.put`); every ES worker receives the ref in its constructor and maps the same read-only
bytes, so a perturbation is named by a single integer — its offset in the table. Each iteration the driver
puts the current parameters theta (one small object), and each worker draws offsets from its own seeded
generator, runs one episode with theta + sigma*eps and one with theta - sigma*eps (antithetic pairs), and
returns only the offsets and the two returns per pair — a few hundred bytes, never a parameter vector. The
driver rebuilds each eps from the table, turns returns into centred ranks (robust to the scale of rewards),
and steps Adam along sum_i (rank_i+ - rank_i-) eps_i / (n sigma), with L2 decay.

ES policies are deterministic: the argmax (discrete) or the mean clipped to the bounds (continuous) of the
same actor MLP PPO uses; the value head is not used.
"""

from __future__ import annotations

import os
import time

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.rl.algorithm import Algorithm, AlgorithmConfig
from p2pcompute.mlkit.rl.env import make_env
from p2pcompute.mlkit.rl.nets import Adam
from p2pcompute.mlkit.rl.policy import Policy, PolicySpec
from p2pcompute.mlkit.rl.worker_group import WorkerGroup


def make_noise_table(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(size, dtype=np.float32)


def centered_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of `x` mapped to [-0.5, 0.5] (ties broken by position)."""
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[x.ravel().argsort()] = np.arange(x.size)
    return (ranks / max(x.size - 1, 1) - 0.5).reshape(x.shape)


class ESWorker:
    """Runs episodes of perturbed policies; holds the shared noise table (a mapped store object)."""

    def __init__(self, env, env_config, policy_spec: PolicySpec, noise: np.ndarray, *, max_episode_steps=None,
                 worker_index: int = 0, seed: int = 0):
        self.env = make_env(env, env_config, worker_index, 0)
        self.policy = Policy(policy_spec)
        self.noise = noise
        self.max_steps = max_episode_steps
        self.rng = np.random.default_rng(seed)
        self.worker_index = worker_index

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> dict:
        """This worker's process id and the peer (node) it runs on."""
        import p2pcompute as p2p
        return {"pid": os.getpid(), "node_id": p2p.get_runtime_context().get_node_id()}

    def episode(self, weights: np.ndarray) -> tuple[float, int]:
        self.policy.set_weights(weights)
        obs, _ = self.env.reset(seed=int(self.rng.integers(2**31)))
        total, steps, done = 0.0, 0, False
        while not done:
            obs, r, terminated, truncated, _ = self.env.step(self.policy.compute_single_action(obs))
            total += float(r)
            steps += 1
            done = terminated or truncated or (self.max_steps is not None and steps >= self.max_steps)
        return total, steps

    def rollouts(self, theta: np.ndarray, num_pairs: int, noise_stdev: float, num_eval_episodes: int = 0) -> dict:
        """Offsets and (return of theta+sigma*eps, return of theta-sigma*eps) for `num_pairs` perturbations."""
        t0 = time.perf_counter()
        n = theta.size
        offsets = self.rng.integers(0, self.noise.size - n + 1, size=num_pairs)
        returns = np.zeros((num_pairs, 2))
        steps = 0
        for k, off in enumerate(offsets):
            eps = self.noise[off:off + n]
            for j, sign in enumerate((1.0, -1.0)):
                returns[k, j], length = self.episode(theta + sign * noise_stdev * eps)
                steps += length
        evals = []
        for _ in range(num_eval_episodes):
            ret, length = self.episode(theta)
            evals.append(ret)
            steps += length
        return {"offsets": offsets, "returns": returns, "eval_returns": np.array(evals), "env_steps": steps,
                "time_s": time.perf_counter() - t0}


class ESConfig(AlgorithmConfig):
    """ES settings; `.training()` takes the names below (RLlib's ES names where it had one)."""

    TRAINING_DEFAULTS = {
        "stepsize": 0.02,            # Adam's learning rate
        "noise_stdev": 0.05,
        "num_rollouts_per_worker": 8,  # antithetic pairs per worker per iteration
        "l2_coeff": 0.005,
        "noise_size": 10_000_000,    # float32 numbers in the shared table (40 MB)
        "max_episode_steps": None,
        "num_eval_episodes": 1,      # unperturbed episodes per worker per iteration (the reported return)
    }

    def __init__(self):
        super().__init__()
        self._settings["model"] = {"fcnet_hiddens": [32, 32]}

    def validate(self) -> None:
        super().validate()
        s = self._settings
        if not (isinstance(s["num_rollouts_per_worker"], int) and s["num_rollouts_per_worker"] >= 1):
            raise ValueError("num_rollouts_per_worker must be an integer >= 1")
        if s["noise_stdev"] <= 0 or s["stepsize"] <= 0:
            raise ValueError("noise_stdev and stepsize must be positive")
        if s["observation_filter"] != "NoFilter":
            raise ValueError("ES here does not normalise observations: leave observation_filter='NoFilter'")


class ES(Algorithm):
    config_class = ESConfig

    def setup(self) -> None:
        c = self.config
        if c.noise_size < self.policy.num_params * 2:
            raise ValueError(f"noise_size {c.noise_size} is too small for a policy of {self.policy.num_params} "
                             "parameters; use at least 100x that")
        self.adam = Adam(self.policy.num_params, lr=c.stepsize)
        self.noise = make_noise_table(c.noise_size, self.seed)
        self.noise_ref = None
        self.local_worker = None
        self.workers = None

        def worker_args(index: int, generation: int):
            noise = self.noise_ref if self.noise_ref is not None else self.noise
            return ((c.env, c.env_config, self.policy_spec, noise),
                    dict(max_episode_steps=c.max_episode_steps, worker_index=index,
                         seed=self.seed + 1000 * index + 100_003 * generation))

        if c.num_env_runners == 0:
            args, kwargs = worker_args(0, 0)
            self.local_worker = ESWorker(*args, **kwargs)
        else:
            if not p2p.is_initialized():
                raise RuntimeError("num_env_runners > 0 runs ES workers as actors: call p2pcompute.init() first, "
                                   "or set .env_runners(num_env_runners=0)")
            self.noise_ref = p2p.put(self.noise)  # the table goes into the store once, for every worker
            self.workers = WorkerGroup(ESWorker, c.num_env_runners, worker_args,
                                       {"num_cpus": c.num_cpus_per_env_runner}, restart=c.restart_failed_env_runners)

    def training_step(self) -> dict:
        c = self.config
        theta = self.policy.get_weights()
        call_args = (c.num_rollouts_per_worker, c.noise_stdev, c.num_eval_episodes)
        if self.local_worker is not None:
            results = [self.local_worker.rollouts(theta, *call_args)]
        else:
            theta_ref = p2p.put(theta)  # one broadcast per iteration
            results = []
            for _ in range(c.max_failed_sample_rounds):
                answered = self.workers.call("rollouts", lambda index: (theta_ref, *call_args), c.sample_timeout_s)
                if answered:
                    results = [answered[i] for i in sorted(answered)]
                    break
            else:
                raise RuntimeError("every ES worker was lost in several rounds in a row")
        offsets = np.concatenate([r["offsets"] for r in results])
        returns = np.concatenate([r["returns"] for r in results])
        ranks = centered_ranks(returns)
        weights = ranks[:, 0] - ranks[:, 1]
        n = theta.size
        g = np.zeros(n)
        for w, off in zip(weights, offsets):
            g += w * self.noise[off:off + n]
        g /= len(offsets) * c.noise_stdev
        # Adam minimises: descend along minus the estimated gradient of the return, plus L2 decay.
        self.policy.set_weights(self.adam.step(theta, -g + c.l2_coeff * theta))
        steps = int(sum(r["env_steps"] for r in results))
        self.num_env_steps_sampled += steps
        evals = np.concatenate([r["eval_returns"] for r in results])
        self.record_episodes(evals if evals.size else returns.ravel(), [])
        return {
            "num_env_steps_sampled_this_iter": steps,
            "num_healthy_env_runners": len(self.workers.workers) if self.workers else 0,
            "num_env_runner_restarts": self.workers.num_replaced if self.workers else 0,
            "perturbed_return_mean": float(returns.mean()),
            "update_norm": float(np.linalg.norm(g)),
            # This iteration's episodes of the current (unperturbed) policy, not a window over past policies:
            # ES changes every parameter each iteration, so older episodes say little about the policy now.
            "env_runners": {"sample_time_s": max(r["time_s"] for r in results),
                            "episode_return_mean": float(evals.mean() if evals.size else returns.mean())},
        }

    def extra_state(self) -> dict:
        return {"adam": self.adam.state()}

    def load_extra_state(self, state: dict) -> None:
        self.adam.load(state["adam"])

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()


ESConfig.algo_class = ES

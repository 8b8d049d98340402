"""p2pcompute.mlkit.rl: distributed reinforcement learning with numpy policies and Gymnasium environments.

    from p2pcompute.mlkit import rl
    algo = rl.PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=2).training(lr=3e-4).build()
    for _ in range(20):
        print(algo.train()["episode_return_mean"])

Pieces, each usable alone: `RolloutWorker` (a vector of envs stepped by one policy, sample batches with
GAE), `Policy` / `PolicySpec` (numpy MLP, categorical or diagonal-Gaussian head, value head), `Adam`,
`compute_gae`, `ppo_loss`, `WorkerGroup` (actors replaced when lost); algorithms `PPO` and `ES` with their
configs; `load_policy(checkpoint)` for serving; `trainable(config)` for tuning.
"""

from p2pcompute.mlkit.rl.algorithm import Algorithm, AlgorithmConfig
from p2pcompute.mlkit.rl.distributions import Categorical, DiagGaussian
from p2pcompute.mlkit.rl.env import EnvContext, make_env
from p2pcompute.mlkit.rl.es import ES, ESConfig
from p2pcompute.mlkit.rl.gae import compute_gae
from p2pcompute.mlkit.rl.nets import MLP, Adam
from p2pcompute.mlkit.rl.policy import Policy, PolicySpec, load_policy
from p2pcompute.mlkit.rl.ppo import PPO, PPOConfig, ppo_loss
from p2pcompute.mlkit.rl.rollout import RolloutWorker, SampleBatch
from p2pcompute.mlkit.rl.tuning import trainable
from p2pcompute.mlkit.rl.worker_group import WorkerGroup

__all__ = ["Adam", "Algorithm", "AlgorithmConfig", "Categorical", "DiagGaussian", "ES", "ESConfig", "EnvContext",
           "MLP", "PPO", "PPOConfig", "Policy", "PolicySpec", "RolloutWorker", "SampleBatch", "WorkerGroup",
           "compute_gae", "load_policy", "make_env", "ppo_loss", "trainable"]

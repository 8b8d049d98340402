"""PPO on CartPole-v1 with two rollout workers: prints the mean return per iteration and the wall time.

    python examples/rl_cartpole.py

Stops when the 100-episode mean return reaches 475 (CartPole's "solved" bar; 500 is the most an episode
can score) or after 30 s of training, then checkpoints the policy and plays one greedy episode with it.
"""

import tempfile
import time

import gymnasium as gym

import p2pcompute as p2p
from p2pcompute.mlkit import rl

TIME_BUDGET_S = 30


def main():
    p2p.init(num_cpus=2)
    algo = (rl.PPOConfig()
            .environment("CartPole-v1")
            .env_runners(num_env_runners=2)
            .training(lr=3e-4)
            .debugging(seed=0)
            .build())
    t0 = time.perf_counter()
    while True:
        result = algo.train()
        print(f"iteration {result['training_iteration']:3d}  env steps {result['num_env_steps_sampled_lifetime']:7,d}"
              f"  mean return {result['episode_return_mean']:6.1f}  ({result['time_this_iter_s']:.2f} s)")
        if result["episode_return_mean"] >= 475 or time.perf_counter() - t0 > TIME_BUDGET_S:
            break
    print(f"wall time {time.perf_counter() - t0:.1f} s for {result['num_env_steps_sampled_lifetime']:,} env steps")

    with tempfile.TemporaryDirectory() as path:
        algo.save(path)
        algo.stop()
        policy = rl.load_policy(path)  # what a serving replica would load: no cluster needed
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=123)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.compute_single_action(obs))
        total += reward
        done = terminated or truncated
    print(f"one greedy episode with the policy restored from its checkpoint returns {total:.0f}")
    p2p.shutdown()


if __name__ == "__main__":
    main()

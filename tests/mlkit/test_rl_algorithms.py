"""PPO and ES in one process (num_env_runners=0): learning on CartPole, checkpoints, configs, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from p2pcompute.mlkit import rl

pytestmark = pytest.mark.mlkit


def _ppo_config(**training):
    return (rl.PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=0, num_envs_per_env_runner=4)
            .training(**{"lr": 1e-3, "train_batch_size": 1000, "minibatch_size": 64, **training})
            .debugging(seed=0))


@pytest.mark.slow
def test_short_ppo_run_on_cartpole_improves_the_mean_return():
    algo = _ppo_config().build()
    returns = [algo.train()["episode_return_mean"] for _ in range(10)]
    # A random CartPole policy lasts ~20 steps. Ten iterations (10,000 env steps) of PPO at these settings
    # take the 100-episode mean return past 60 (seed 0 gives ~80); a broken gradient stays near 20.
    assert returns[0] < 40
    assert returns[-1] > 2 * returns[0]
    assert returns[-1] > 60
    assert algo.evaluate(num_episodes=3)["evaluation_return_mean"] > 100  # the greedy policy is better still


def test_save_and_restore_give_identical_actions(tmp_path):
    algo = _ppo_config().build()
    algo.train()
    algo.train()
    path = algo.save(str(tmp_path / "ckpt"))
    restored = rl.PPO.from_checkpoint(path)
    also = rl.Algorithm.from_checkpoint(path)  # the class is read from the checkpoint
    served = rl.load_policy(path)              # the policy alone, as a serving replica would load it
    obs = np.random.default_rng(1).uniform(-0.2, 0.2, size=(50, 4))
    expected = [algo.compute_single_action(o) for o in obs]
    assert len(set(expected)) == 2  # both actions occur, so the comparison means something
    for other in (restored, also):
        assert type(other) is rl.PPO and other.iteration == 2
        assert [other.compute_single_action(o) for o in obs] == expected
        np.testing.assert_array_equal(other.get_weights(), algo.get_weights())
        np.testing.assert_array_equal(other.adam.m, algo.adam.m)
    assert [served.compute_single_action(o) for o in obs] == expected
    # restore() into a fresh algorithm with other weights brings the checkpoint's back
    fresh = _ppo_config().debugging(seed=5).build()
    assert not np.array_equal(fresh.get_weights(), algo.get_weights())
    fresh.restore(path)
    assert [fresh.compute_single_action(o) for o in obs] == expected
    assert fresh.train()["training_iteration"] == 3


def test_ppo_on_a_continuous_env_runs_and_reports():
    algo = (rl.PPOConfig().environment("Pendulum-v1").env_runners(num_env_runners=0, num_envs_per_env_runner=2)
            .training(train_batch_size=400, minibatch_size=100, num_epochs=2).debugging(seed=0).build())
    result = algo.train()
    assert result["num_env_steps_sampled_this_iter"] == 400
    assert result["env_runners"]["episode_return_mean"] < 0  # two 200-step episodes finished
    action = algo.compute_single_action(np.array([1.0, 0.0, 0.0]))
    assert action.shape == (1,) and -2.0 <= action[0] <= 2.0


def test_es_in_process_improves_cartpole():
    algo = (rl.ESConfig().environment("CartPole-v1").env_runners(num_env_runners=0)
            .training(num_rollouts_per_worker=10, noise_size=200_000, num_eval_episodes=3)
            .debugging(seed=0).build())
    first = algo.train()
    for _ in range(5):
        last = algo.train()
    assert last["perturbed_return_mean"] > first["perturbed_return_mean"]
    assert last["num_env_steps_sampled_lifetime"] > 0


def test_env_creator_gets_its_config_and_indices():
    import gymnasium as gym
    seen = []

    def creator(ctx):
        seen.append((dict(ctx), ctx.worker_index, ctx.vector_index))
        return gym.make("CartPole-v1", max_episode_steps=ctx["limit"])

    algo = (rl.PPOConfig().environment(creator, env_config={"limit": 7})
            .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=20)
            .training(train_batch_size=40, minibatch_size=20, num_epochs=1).debugging(seed=0).build())
    result = algo.train()
    assert ({"limit": 7}, 0, 1) in seen
    assert result["env_runners"]["episode_len_mean"] <= 7


def test_bad_configs_fail_with_clear_errors():
    with pytest.raises(TypeError, match="did you mean 'clip_param'"):
        rl.PPOConfig().training(clip_parm=0.3)
    with pytest.raises(TypeError, match="num_env_runners"):
        rl.PPOConfig().env_runners(num_workers=2)
    with pytest.raises(ValueError, match="no environment"):
        rl.PPOConfig().build()
    with pytest.raises(ValueError, match="cannot make environment 'NoSuchEnv-v0'"):
        rl.PPOConfig().environment("NoSuchEnv-v0").env_runners(num_env_runners=0).build()
    with pytest.raises(TypeError, match="function env_config -> env"):
        rl.PPOConfig().environment(42).env_runners(num_env_runners=0).build()
    with pytest.raises(ValueError, match="clip_param"):
        rl.PPOConfig().environment("CartPole-v1").training(clip_param=2.0).build()
    with pytest.raises(ValueError, match="unknown model option"):
        rl.PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=0).training(
            model={"fcnet_hidden": [8]}).build()
    with pytest.raises(FileNotFoundError, match="Algorithm.save"):
        rl.PPO.from_checkpoint("/nonexistent/checkpoint")


def test_config_round_trips_through_a_dict_for_tuners():
    base = rl.PPOConfig().environment("CartPole-v1").training(lr=1e-3)
    varied = base.copy().update_from_dict({"lr": 5e-4, "num_env_runners": 0})
    assert varied.lr == 5e-4 and base.lr == 1e-3
    assert rl.PPOConfig().update_from_dict(varied.to_dict()).to_dict() == varied.to_dict()


def test_function_trainable_runs_outside_tune():
    fn = rl.trainable(_ppo_config(train_batch_size=200, num_epochs=1), num_iterations=2)
    result = fn({"lr": 5e-4})
    assert result["training_iteration"] == 2
    assert result["learners"]["lr"] == 5e-4


def test_mean_std_filter_normalises_and_is_kept_in_checkpoints(tmp_path):
    algo = _ppo_config().env_runners(observation_filter="MeanStdFilter").build()
    assert algo.policy.obs_mean is None  # nothing seen yet
    algo.train()
    algo.train()
    stat = algo.obs_stat
    assert stat.count == 2000  # every observation the workers stepped from, once
    assert np.all(algo.policy.obs_std < 1.0)  # CartPole's angle and position vary far less than 1
    raw = np.array([[0.05, 0.2, -0.03, -0.3]])
    np.testing.assert_allclose(algo.policy.preprocess(raw), (raw - stat.mean) / stat.std)
    path = algo.save(str(tmp_path / "ckpt"))
    obs = np.random.default_rng(2).uniform(-0.2, 0.2, size=(40, 4))
    expected = [algo.compute_single_action(o) for o in obs]
    for other in (rl.PPO.from_checkpoint(path), rl.load_policy(path)):
        np.testing.assert_allclose(other.get_policy().obs_mean if hasattr(other, "get_policy") else other.obs_mean,
                                   stat.mean)
        assert [other.compute_single_action(o) for o in obs] == expected
    with pytest.raises(ValueError, match="observation_filter"):
        rl.PPOConfig().environment("CartPole-v1").env_runners(observation_filter="Mean").build()

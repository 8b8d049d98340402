"""rl on a real peer: rollout workers as actors, one weight broadcast per iteration, ES's shared noise table,
and a rollout worker SIGKILLed in the middle of an iteration."""

from __future__ import annotations

import os
import signal
import threading

import gymnasium as gym
import numpy as np
import pytest

import p2pcompute as p2p
from itest_util import wait_until
from p2pcompute.mlkit import rl

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]

# Workers here ask for no CPU: the shared 2-CPU peer may have CPUs held by other tests' actors, and these
# tests are about sampling, broadcasts and replacement, not placement (the peer-loss test uses real CPUs).


@pytest.fixture
def count_puts(monkeypatch):
    """Counts p2p.put calls made by this process (the real put still runs)."""
    calls = []
    real_put = p2p.put

    def put(value):
        calls.append(type(value).__name__)
        return real_put(value)

    monkeypatch.setattr(p2p, "put", put)
    return calls


@pytest.mark.timeout(120)
def test_ppo_samples_on_worker_actors_with_one_broadcast_per_iteration(ml_cluster, count_puts):
    algo = (rl.PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=2, num_envs_per_env_runner=2, num_cpus_per_env_runner=0)
            .training(train_batch_size=400, num_epochs=2).debugging(seed=0).build())
    try:
        pids = p2p.get([w.pid.remote() for w in algo.workers.workers.values()], timeout=60)
        assert len(set(pids)) == 2 and os.getpid() not in pids
        for iteration in (1, 2):
            before = len(count_puts)
            result = algo.train()
            assert count_puts[before:] == ["ndarray"]  # the weights, once, whatever the number of workers
            assert result["num_env_runner_batches"] == 2
            assert result["num_env_steps_sampled_this_iter"] == 400
            assert result["num_env_steps_sampled_lifetime"] == 400 * iteration
        assert result["num_env_runner_restarts"] == 0
        # The workers sample with the weights the learner has now: their values match the driver's.
        w = algo.workers.workers[1]
        batch = p2p.get(w.sample.remote(p2p.put(algo.get_weights()), 3), timeout=60)
        expected, _ = algo.policy.value(algo.policy.preprocess(batch.obs))
        np.testing.assert_allclose(batch.values, expected)
    finally:
        algo.stop()


class StallingCartPole(gym.Wrapper):
    """CartPole that, in rollout worker 2's first incarnation only, stops after 30 steps and waits until
    its process is killed (writing its pid first), so the test can kill a worker that is mid-sample."""

    def __init__(self, ctx):
        super().__init__(gym.make("CartPole-v1"))
        self.marker = os.path.join(ctx["dir"], "stalled")
        self.stall = ctx.worker_index == 2 and ctx.vector_index == 0 and not os.path.exists(self.marker)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.stall and self.steps == 30:
            tmp = self.marker + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, self.marker)
            released = threading.Event()
            released.wait(120)  # never set: this worker waits to be killed (bounded so nothing hangs)
        return super().step(action)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_rollout_worker_killed_mid_iteration_is_replaced(ml_cluster, tmp_path):
    algo = (rl.PPOConfig().environment(StallingCartPole, env_config={"dir": str(tmp_path)})
            .env_runners(num_env_runners=2, rollout_fragment_length=100, num_cpus_per_env_runner=0)
            .training(train_batch_size=200, num_epochs=1).debugging(seed=0).build())
    try:
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(result=algo.train()), daemon=True)
        runner.start()
        marker = tmp_path / "stalled"
        wait_until(lambda: marker.exists() and marker.read_text(), 60, what="worker 2 to be mid-sample")
        victim = int(marker.read_text())
        os.kill(victim, signal.SIGKILL)
        runner.join(120)
        assert not runner.is_alive(), "the iteration did not complete after its worker was killed"
        result = outcome["result"]
        # The iteration trained on worker 1's samples alone, and worker 2 was replaced.
        assert result["num_env_runner_batches"] == 1
        assert result["num_env_steps_sampled_this_iter"] == 100
        assert result["num_env_runner_restarts"] == 1
        assert result["num_healthy_env_runners"] == 2
        new_pid = p2p.get(algo.workers.workers[2].pid.remote(), timeout=60)
        assert new_pid != victim
        result = algo.train()  # the replacement samples in the next iteration
        assert result["num_env_runner_batches"] == 2
        assert result["num_env_steps_sampled_this_iter"] == 200
    finally:
        algo.stop()


@pytest.mark.timeout(120)
def test_es_puts_the_noise_table_once_and_workers_return_only_offsets_and_returns(ml_cluster, count_puts):
    algo = (rl.ESConfig().environment("CartPole-v1").env_runners(num_env_runners=2, num_cpus_per_env_runner=0)
            .training(num_rollouts_per_worker=6, noise_size=300_000, num_eval_episodes=2)
            .debugging(seed=0).build())
    try:
        assert count_puts == ["ndarray"]  # the noise table, at build time
        noise_puts = len(count_puts)
        first = algo.train()
        for _ in range(4):
            last = algo.train()
        assert len(count_puts) - noise_puts == 5  # one parameter vector per iteration, no more tables
        assert last["perturbed_return_mean"] > first["perturbed_return_mean"]
        # What a worker sends back: offsets into the table and two returns per pair, nothing parameter-sized.
        w = algo.workers.workers[1]
        out = p2p.get(w.rollouts.remote(p2p.put(algo.get_weights()), 3, 0.05, 0), timeout=60)
        assert out["offsets"].shape == (3,) and out["returns"].shape == (3, 2)
        assert all(np.asarray(v).size <= 6 for v in out.values())
    finally:
        algo.stop()


@pytest.mark.timeout(120)
def test_ppo_as_a_tune_function_trainable(ml_cluster, tmp_path):
    tune = pytest.importorskip("p2pcompute.mlkit.tune")
    base = (rl.PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=0, num_envs_per_env_runner=4)
            .training(train_batch_size=500, num_epochs=2).debugging(seed=0))
    tuner = tune.Tuner(rl.trainable(base, num_iterations=3),
                       param_space={"lr": tune.grid_search([1e-3, 1e-6])},
                       tune_config=tune.TuneConfig(metric="episode_return_mean", mode="max"),
                       run_config=tune.RunConfig(storage_path=str(tmp_path)))
    best = tuner.fit().get_best_result()
    assert best.config == {"lr": 1e-3}  # a learning rate of 1e-6 cannot beat it in 1,500 steps
    assert best.metrics["training_iteration"] == 3
    assert best.metrics["learners/lr"] == 1e-3
    with best.checkpoint.as_directory() as d:  # the trial's last checkpoint is an rl checkpoint
        restored = rl.PPO.from_checkpoint(d)
        assert restored.iteration == 3
        assert rl.load_policy(d).compute_single_action(np.zeros(4)) in (0, 1)


@pytest.mark.timeout(120)
def test_rollout_worker_that_does_not_answer_in_time_is_replaced(ml_cluster, tmp_path):
    import psutil
    algo = (rl.PPOConfig().environment(StallingCartPole, env_config={"dir": str(tmp_path)})
            .env_runners(num_env_runners=2, rollout_fragment_length=50, sample_timeout_s=5,
                         num_cpus_per_env_runner=0)
            .training(train_batch_size=100, num_epochs=1).debugging(seed=0).build())
    try:
        # Both workers up before the clock starts, so the deadline measures sampling, not actor start-up.
        p2p.get([w.pid.remote() for w in algo.workers.workers.values()], timeout=60)
        result = algo.train()  # worker 2 stalls at its 30th step and never answers
        stalled_pid = int((tmp_path / "stalled").read_text())
        assert result["num_env_runner_batches"] == 1
        assert result["num_env_runner_restarts"] == 1
        assert result["time_this_iter_s"] >= 5
        # The stalled worker was stopped, not left running beside its replacement.
        wait_until(lambda: not psutil.pid_exists(stalled_pid) or psutil.Process(stalled_pid).status() == "zombie",
                   30, what="the stalled worker's process to be killed")
        # The replacement answers before the next iteration's 5 s deadline starts (its start-up is not sampling).
        assert p2p.get(algo.workers.workers[2].pid.remote(), timeout=60) != stalled_pid
        assert algo.train()["num_env_runner_batches"] == 2
    finally:
        algo.stop()


def test_a_worker_no_peer_can_host_fails_at_build(ml_cluster):
    with pytest.raises(ValueError, match="num_cpus_per_env_runner"):
        (rl.PPOConfig().environment("CartPole-v1")
         .env_runners(num_env_runners=1, num_cpus_per_env_runner=64).build())


@pytest.mark.timeout(120)
def test_mean_std_filter_statistics_travel_in_the_same_single_broadcast(ml_cluster, count_puts):
    algo = (rl.PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=2, num_cpus_per_env_runner=0, observation_filter="MeanStdFilter")
            .training(train_batch_size=200, num_epochs=1).debugging(seed=0).build())
    try:
        algo.train()
        before = len(count_puts)
        algo.train()
        assert count_puts[before:] == ["dict"]  # weights and filter statistics, one object
        assert algo.obs_stat.count == 400  # both workers' observations merged, both iterations
    finally:
        algo.stop()

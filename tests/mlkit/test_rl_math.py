"""rl's numerics without a cluster: gradients against finite differences, GAE against a hand-computed
example, PPO's clipped loss on a batch whose answer is known, rank shaping and Adam."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from p2pcompute.mlkit import rl
from p2pcompute.mlkit.rl.es import centered_ranks

pytestmark = pytest.mark.mlkit


def _policy(kind: str, seed: int = 0) -> rl.Policy:
    if kind == "discrete":
        spec = rl.PolicySpec(obs_dim=3, obs_discrete=False, action_kind="discrete", action_dim=3, hiddens=(5, 4))
    else:
        spec = rl.PolicySpec(obs_dim=3, obs_discrete=False, action_kind="continuous", action_dim=2,
                             action_low=(-1.0, -1.0), action_high=(1.0, 1.0), hiddens=(5, 4), init_log_std=-0.3)
    policy = rl.Policy(spec, seed=seed)
    # Larger weights than the near-zero initial actor head, so every term of the gradient is exercised.
    rng = np.random.default_rng(seed + 1)
    policy.set_weights(policy.get_weights() + 0.3 * rng.standard_normal(policy.num_params))
    return policy


def _batch(policy: rl.Policy, n: int, seed: int) -> dict:
    """Rows sampled from the policy, with old log-probs set so that ratios are either well inside the clip
    range or well outside it (finite differences must not straddle the kink of the min)."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, policy.spec.obs_dim))
    actions, logp, values = policy.compute_actions(obs, rng)
    log_ratio = rng.choice([-0.6, -0.05, 0.0, 0.05, 0.6], size=n)
    return {"obs": obs, "actions": actions, "logp": logp - log_ratio, "values": values,
            "advantages": rng.standard_normal(n), "value_targets": values + rng.standard_normal(n)}


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_ppo_gradient_matches_finite_differences(kind):
    policy = _policy(kind)
    rows = _batch(policy, 16, seed=3)
    kw = dict(clip_param=0.2, vf_loss_coeff=0.7, entropy_coeff=0.05, normalize_advantages=True)
    w = policy.get_weights()
    _, grad, _ = rl.ppo_loss(policy, w, rows, **kw)
    h = 1e-6
    numeric = np.zeros_like(w)
    for i in range(w.size):
        e = np.zeros_like(w)
        e[i] = h
        numeric[i] = (rl.ppo_loss(policy, w + e, rows, **kw)[0] - rl.ppo_loss(policy, w - e, rows, **kw)[0]) / (2 * h)
    assert np.abs(grad).max() > 1e-3  # a zero gradient would match a flat loss trivially
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-7)


def test_gae_matches_a_hand_computed_example():
    # One env, three steps; the episode ends at step 1, so step 0 does not see step 2.
    rewards = np.array([[1.0], [1.0], [1.0]])
    values = np.array([[0.5], [0.4], [0.3]])
    dones = np.array([[0.0], [1.0], [0.0]])
    adv, targets = rl.compute_gae(rewards, values, dones, np.array([0.2]), gamma=0.9, lambda_=0.8)
    # t=2: 1 + 0.9*0.2 - 0.3 = 0.88;  t=1 (done): 1 - 0.4 = 0.6;  t=0: (1 + 0.9*0.4 - 0.5) + 0.9*0.8*0.6
    np.testing.assert_allclose(adv[:, 0], [0.86 + 0.432, 0.6, 0.88])
    np.testing.assert_allclose(targets[:, 0], [1.292 + 0.5, 1.0, 0.88 + 0.3])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 3), st.floats(0.5, 1.0), st.integers(0, 10_000))
def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value(T, N, gamma, seed):
    rng = np.random.default_rng(seed)
    rewards, values = rng.standard_normal((T, N)), rng.standard_normal((T, N))
    dones = (rng.random((T, N)) < 0.3).astype(float)
    last = rng.standard_normal(N)
    adv, targets = rl.compute_gae(rewards, values, dones, last, gamma=gamma, lambda_=1.0)
    expected = np.zeros((T, N))
    running = last.copy()
    for t in range(T - 1, -1, -1):
        running = rewards[t] + gamma * running * (1 - dones[t])
        expected[t] = running
    np.testing.assert_allclose(targets, expected, atol=1e-9)
    np.testing.assert_allclose(adv, expected - values, atol=1e-9)


def test_ppo_clipped_loss_on_a_known_batch():
    policy = _policy("discrete")
    rng = np.random.default_rng(7)
    obs = rng.standard_normal((4, 3))
    actions = np.array([0, 1, 2, 1])
    x = policy.preprocess(obs)
    dist, _ = policy.distribution(x)
    logp_now = dist.logp(actions)
    values, _ = policy.value(x)
    ratios = np.array([0.5, 1.0, 1.5, 1.1])
    adv = np.array([1.0, -1.0, 1.0, -1.0])
    rows = {"obs": obs, "actions": actions, "logp": logp_now - np.log(ratios), "advantages": adv,
            "value_targets": values + np.array([1.0, 2.0, 0.0, -1.0])}
    loss, grad, stats = rl.ppo_loss(policy, policy.weights, rows, clip_param=0.2, vf_loss_coeff=0.0,
                                    entropy_coeff=0.0, normalize_advantages=False)
    # min(rA, clip(r)A): 0.5 (unclipped), -1.0, min(1.5, 1.2) = 1.2 (clipped), -1.1  -> mean -0.1
    assert loss == pytest.approx(0.1)
    assert stats["policy_loss"] == pytest.approx(0.1)
    assert stats["vf_loss"] == pytest.approx(0.5 * np.mean([1.0, 4.0, 0.0, 1.0]))
    assert stats["clip_fraction"] == pytest.approx(0.5)
    # The clipped row (r=1.5, A>0) contributes nothing to the gradient; the r=0.5 row, though outside the
    # range, is unclipped by the min (A>0 and r < 1-eps) and does.
    keep = [0, 1, 3]
    sub = {k: v[keep] for k, v in rows.items()}
    _, grad_without, _ = rl.ppo_loss(policy, policy.weights, sub, clip_param=0.2, vf_loss_coeff=0.0,
                                     entropy_coeff=0.0, normalize_advantages=False)
    np.testing.assert_allclose(grad, grad_without * 3 / 4, atol=1e-12)
    assert np.abs(grad).max() > 1e-4


def test_categorical_and_gaussian_log_probs_are_normalised():
    rng = np.random.default_rng(0)
    cat = rl.Categorical(rng.standard_normal((5, 4)))
    total = sum(np.exp(cat.logp(np.full(5, a))) for a in range(4))
    np.testing.assert_allclose(total, 1.0)
    g = rl.DiagGaussian(np.zeros((1, 1)), np.array([np.log(0.5)]))
    grid = np.linspace(-5, 5, 2001)
    dens = np.exp(rl.DiagGaussian(np.zeros((grid.size, 1)), g.log_std).logp(grid[:, None]))
    assert dens.sum() * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-3)  # a Riemann sum of the density
    assert g.entropy()[0] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * 0.25))


def test_centered_ranks_are_uniform_in_minus_half_to_half():
    r = centered_ranks(np.array([[10.0, -3.0], [0.5, 7.0]]))
    np.testing.assert_allclose(r, [[0.5, -0.5], [-1 / 6, 1 / 6]])


def test_adam_minimises_a_quadratic():
    adam = rl.Adam(3, lr=0.1)
    x = np.array([3.0, -2.0, 1.0])
    for _ in range(300):
        x = adam.step(x, 2 * x)
    assert np.abs(x).max() < 0.05


def test_mlp_rejects_bad_layouts():
    with pytest.raises(ValueError, match="activation"):
        rl.MLP((2, 3), activation="sigmoidish")
    with pytest.raises(ValueError, match="positive"):
        rl.MLP((2, 0, 1))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=5), st.integers(0, 10_000))
def test_running_stats_merged_from_parts_equal_the_whole(sizes, seed):
    from p2pcompute.mlkit.rl.filters import RunningStat
    rng = np.random.default_rng(seed)
    parts = [rng.normal(3.0, 2.0, size=(n, 3)) for n in sizes]
    total = RunningStat.zeros(3)
    for part in parts:  # as the learner merges the workers' deltas
        delta = RunningStat.zeros(3)
        delta.push(part)
        total.merge(delta)
    whole = np.concatenate(parts)
    assert total.count == len(whole)
    np.testing.assert_allclose(total.mean, whole.mean(axis=0))
    if len(whole) > 1:
        np.testing.assert_allclose(total.std, np.maximum(whole.std(axis=0), 1e-2))

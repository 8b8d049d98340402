"""Policies in numpy: an actor MLP with a categorical or diagonal-Gaussian head, and a separate value MLP.

Theory of operation. A `PolicySpec` (small, picklable, JSON-able) says what the policy looks like: the
observation size, the action space, the hidden layers. A `Policy` is a spec plus one flat weight vector laid
out as [actor MLP | value MLP | log std (continuous actions only)]. Rollout workers receive the spec once and
a fresh weight vector every iteration; the learner computes gradients into a vector of the same layout.

Separate actor and value networks (no shared trunk) is the PPO default that trains reliably on classic
control without tuning the value-loss weight; the actor's output layer starts near zero so the first policy
is close to uniform (discrete) or centred with the initial standard deviation (continuous).

A trained policy needs no cluster: `load_policy(checkpoint_path)` returns a `Policy` whose
`compute_single_action(obs)` can run inside a web handler or a serve replica.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from p2pcompute.mlkit.rl.distributions import Categorical, DiagGaussian
from p2pcompute.mlkit.rl.filters import normalize
from p2pcompute.mlkit.rl.nets import MLP

POLICY_FILE = "policy.npz"


@dataclass(frozen=True)
class PolicySpec:
    obs_dim: int
    obs_discrete: bool          # a Discrete observation space, fed one-hot
    action_kind: str            # "discrete" or "continuous"
    action_dim: int             # number of actions (discrete) or action vector length (continuous)
    action_low: tuple = ()      # bounds of a Box action space: sampled actions are clipped into them
    action_high: tuple = ()
    hiddens: tuple = (64, 64)
    activation: str = "tanh"
    init_log_std: float = 0.0

    @staticmethod
    def from_spaces(obs_space, action_space, model: dict | None = None) -> "PolicySpec":
        from gymnasium import spaces
        model = dict(model or {})
        hiddens = tuple(int(h) for h in model.pop("fcnet_hiddens", (64, 64)))
        activation = model.pop("fcnet_activation", "tanh")
        init_log_std = float(model.pop("init_log_std", 0.0))
        if model:
            raise ValueError(f"unknown model option(s) {sorted(model)}; "
                             "known: fcnet_hiddens, fcnet_activation, init_log_std")
        if isinstance(obs_space, spaces.Box):
            obs_dim, obs_discrete = int(np.prod(obs_space.shape)), False
        elif isinstance(obs_space, spaces.Discrete):
            obs_dim, obs_discrete = int(obs_space.n), True
        else:
            raise TypeError(f"observation space {obs_space} is not supported: use a Box or Discrete space "
                            "(wrap other spaces, e.g. with gymnasium.wrappers.FlattenObservation)")
        if isinstance(action_space, spaces.Discrete):
            return PolicySpec(obs_dim, obs_discrete, "discrete", int(action_space.n), hiddens=hiddens,
                              activation=activation, init_log_std=init_log_std)
        if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            return PolicySpec(obs_dim, obs_discrete, "continuous", int(action_space.shape[0]),
                              tuple(float(x) for x in action_space.low), tuple(float(x) for x in action_space.high),
                              hiddens=hiddens, activation=activation, init_log_std=init_log_std)
        raise TypeError(f"action space {action_space} is not supported: use Discrete or a 1-D Box")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "PolicySpec":
        d = json.loads(text)
        for key in ("action_low", "action_high", "hiddens"):
            d[key] = tuple(d[key])
        return PolicySpec(**d)


class Policy:
    """A spec and a flat weight vector; stateless apart from the weights."""

    def __init__(self, spec: PolicySpec, weights: np.ndarray | None = None, seed: int = 0):
        self.spec = spec
        out = spec.action_dim
        self.pi = MLP((spec.obs_dim, *spec.hiddens, out), spec.activation, 0, out_gain=0.01)
        self.vf = MLP((spec.obs_dim, *spec.hiddens, 1), spec.activation, self.pi.num_params, out_gain=1.0)
        self._log_std_at = self.pi.num_params + self.vf.num_params
        self.num_params = self._log_std_at + (out if spec.action_kind == "continuous" else 0)
        if weights is None:
            weights = np.zeros(self.num_params)
            rng = np.random.default_rng(seed)
            self.pi.init(weights, rng)
            self.vf.init(weights, rng)
            weights[self._log_std_at:] = spec.init_log_std
        self.set_weights(weights)
        self.obs_mean: np.ndarray | None = None  # observation normalisation (MeanStdFilter), None when off
        self.obs_std: np.ndarray | None = None

    # ---- weights -------------------------------------------------------------------------------------------

    def set_weights(self, weights: np.ndarray) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.num_params,):
            raise ValueError(f"expected a weight vector of {self.num_params} numbers for this policy, got shape "
                             f"{w.shape}")
        self.weights = w  # may be a read-only view of a store object: never written in place

    def get_weights(self) -> np.ndarray:
        return np.array(self.weights)

    def set_obs_filter(self, mean: np.ndarray | None, std: np.ndarray | None) -> None:
        """Normalise observations as (obs - mean) / std (clipped to +-10) before the networks; None: off."""
        if self.spec.obs_discrete and mean is not None:
            raise ValueError("observation normalisation applies to Box observations, not Discrete ones")
        self.obs_mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.obs_std = None if std is None else np.asarray(std, dtype=np.float64)

    # ---- forward -------------------------------------------------------------------------------------------

    def preprocess(self, obs) -> np.ndarray:
        """A batch of observations as a float64 matrix [B, obs_dim] (one-hot for Discrete observations)."""
        if self.spec.obs_discrete:
            idx = np.asarray(obs, dtype=np.int64).reshape(-1)
            x = np.zeros((idx.shape[0], self.spec.obs_dim))
            x[np.arange(idx.shape[0]), idx] = 1.0
            return x
        x = np.asarray(obs, dtype=np.float64)
        x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        return x if self.obs_mean is None else normalize(x, self.obs_mean, self.obs_std)

    def distribution(self, x: np.ndarray, weights: np.ndarray | None = None):
        """The action distribution for preprocessed observations, and the actor's backprop cache."""
        w = self.weights if weights is None else weights
        out, cache = self.pi.forward(w, x)
        if self.spec.action_kind == "discrete":
            return Categorical(out), cache
        return DiagGaussian(out, w[self._log_std_at:]), cache

    def value(self, x: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, list]:
        w = self.weights if weights is None else weights
        v, cache = self.vf.forward(w, x)
        return v[:, 0], cache

    def compute_actions(self, obs, rng: np.random.Generator, explore: bool = True):
        """(actions, log-probabilities, values) for a batch of raw observations."""
        x = self.preprocess(obs)
        dist, _ = self.distribution(x)
        actions = dist.sample(rng) if explore else dist.mode()
        values, _ = self.value(x)
        return actions, dist.logp(actions), values

    def to_env(self, actions: np.ndarray):
        """Actions as the environment takes them: ints, or floats clipped into the Box bounds."""
        if self.spec.action_kind == "discrete":
            return np.asarray(actions, dtype=np.int64)
        return np.clip(actions, self.spec.action_low, self.spec.action_high)

    def compute_single_action(self, obs, *, explore: bool = False, rng: np.random.Generator | None = None):
        """The action for one observation: the most likely one unless `explore`."""
        x = self.preprocess(np.asarray(obs)[None] if not self.spec.obs_discrete else [obs])
        dist, _ = self.distribution(x)
        a = dist.sample(rng or np.random.default_rng()) if explore else dist.mode()
        a = self.to_env(a)[0]
        return int(a) if self.spec.action_kind == "discrete" else a

    # ---- files ---------------------------------------------------------------------------------------------

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, POLICY_FILE)
        extra = {} if self.obs_mean is None else {"obs_mean": self.obs_mean, "obs_std": self.obs_std}
        np.savez(path, weights=self.weights, spec=np.array(self.spec.to_json()), **extra)
        return path


def load_policy(checkpoint) -> Policy:
    """The policy of a checkpoint (a directory written by `Algorithm.save()`, or an object with `.path`)."""
    directory = getattr(checkpoint, "path", checkpoint)
    path = os.path.join(os.fspath(directory), POLICY_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {POLICY_FILE} in {directory!r}: pass a directory written by Algorithm.save()")
    with np.load(path) as f:
        policy = Policy(PolicySpec.from_json(str(f["spec"])), np.array(f["weights"]))
        if "obs_mean" in f:
            policy.set_obs_filter(np.array(f["obs_mean"]), np.array(f["obs_std"]))
        return policy

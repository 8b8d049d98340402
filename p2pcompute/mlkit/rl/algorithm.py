"""The config builder and the algorithm base class shared by PPO and ES, in RLlib's shape.

    algo = (rl.PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=2)
            .training(lr=3e-4).debugging(seed=0).build())
    result = algo.train()            # one iteration; a dict of metrics
    path = algo.save()               # a directory; Algorithm.from_checkpoint(path) or algo.restore(path)
    action = algo.compute_single_action(obs)

Theory of operation. An `AlgorithmConfig` is a bag of named settings with builder methods grouped as in
RLlib (`environment`, `env_runners`, `training`, `debugging`, `fault_tolerance`); every setter checks names
and values at once so a typo fails where it was written, not an hour into a run. `to_dict()` /
`update_from_dict()` make it a plain dict a tuner can vary. `build()` makes the algorithm: a driver-side
policy (the learner's copy of the weights) and, for `num_env_runners > 0`, a `WorkerGroup` of actors.
`train()` runs one `training_step()` of the subclass and adds the bookkeeping every algorithm reports.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import tempfile
import time
from collections import deque

import numpy as np

from p2pcompute.mlkit.rl.env import make_env
from p2pcompute.mlkit.rl.filters import FILTERS
from p2pcompute.mlkit.rl.policy import Policy, PolicySpec

STATE_FILE = "algorithm_state.pkl"

# Settings every algorithm has, with their defaults: {name: default}.
COMMON_SETTINGS = {
    "env": None, "env_config": {},
    "num_env_runners": 2, "num_envs_per_env_runner": 1, "rollout_fragment_length": "auto",
    "num_cpus_per_env_runner": 1, "sample_timeout_s": 300.0, "observation_filter": "NoFilter",
    "restart_failed_env_runners": True, "max_failed_sample_rounds": 3,
    "seed": None, "model": {},
    "metrics_num_episodes_for_smoothing": 100,
}


def _closest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class AlgorithmConfig:
    """Settings for an algorithm; builder methods return the config so calls chain."""

    algo_class: type | None = None
    TRAINING_DEFAULTS: dict = {}

    def __init__(self):
        self._settings = copy.deepcopy({**COMMON_SETTINGS, **self.TRAINING_DEFAULTS})

    def __getattr__(self, name):
        settings = self.__dict__.get("_settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}{_closest(name, settings)}")

    def _set(self, group: str, allowed, **values) -> "AlgorithmConfig":
        for name, value in values.items():
            if name not in allowed:
                raise TypeError(f"{type(self).__name__}.{group}() got an unknown setting {name!r}"
                                f"{_closest(name, allowed)}; known: {', '.join(sorted(allowed))}")
            self._settings[name] = copy.deepcopy(value)
        return self

    # ---- builder groups (RLlib's names) --------------------------------------------------------------------

    def environment(self, env=None, *, env_config: dict | None = None) -> "AlgorithmConfig":
        """A Gymnasium env id or a creator `env_config -> env`, and the config passed to it."""
        if env is not None:
            self._settings["env"] = env
        if env_config is not None:
            self._settings["env_config"] = dict(env_config)
        return self

    def env_runners(self, **kw) -> "AlgorithmConfig":
        """num_env_runners (0: sample in the driver), num_envs_per_env_runner, rollout_fragment_length
        ("auto": train_batch_size split over runners and envs), num_cpus_per_env_runner, sample_timeout_s,
        observation_filter ("NoFilter" or "MeanStdFilter")."""
        return self._set("env_runners", ("num_env_runners", "num_envs_per_env_runner", "rollout_fragment_length",
                                         "num_cpus_per_env_runner", "sample_timeout_s", "observation_filter"), **kw)

    def training(self, **kw) -> "AlgorithmConfig":
        kw = dict(kw)
        if "model" in kw:
            self._settings["model"] = dict(kw.pop("model") or {})
        return self._set("training", self.TRAINING_DEFAULTS, **kw)

    def rl_module(self, *, model_config: dict | None = None) -> "AlgorithmConfig":
        """Network settings: {"fcnet_hiddens": [64, 64], "fcnet_activation": "tanh"}."""
        if model_config is not None:
            self._settings["model"] = dict(model_config)
        return self

    def debugging(self, *, seed: int | None = None) -> "AlgorithmConfig":
        self._settings["seed"] = seed
        return self

    def fault_tolerance(self, **kw) -> "AlgorithmConfig":
        """restart_failed_env_runners (replace lost workers; default True), max_failed_sample_rounds."""
        return self._set("fault_tolerance", ("restart_failed_env_runners", "max_failed_sample_rounds"), **kw)

    def reporting(self, *, metrics_num_episodes_for_smoothing: int | None = None) -> "AlgorithmConfig":
        if metrics_num_episodes_for_smoothing is not None:
            self._settings["metrics_num_episodes_for_smoothing"] = int(metrics_num_episodes_for_smoothing)
        return self

    # ---- plain-dict form, for tuners and checkpoints -------------------------------------------------------

    def to_dict(self) -> dict:
        return copy.deepcopy(self._settings)

    def update_from_dict(self, values: dict) -> "AlgorithmConfig":
        for name, value in values.items():
            if name not in self._settings:
                raise TypeError(f"{type(self).__name__} has no setting {name!r}{_closest(name, self._settings)}")
            self._settings[name] = copy.deepcopy(value)
        return self

    def copy(self) -> "AlgorithmConfig":
        clone = type(self)()
        clone._settings = copy.deepcopy(self._settings)
        return clone

    def validate(self) -> None:
        s = self._settings
        if s["env"] is None:
            raise ValueError("no environment: call .environment('CartPole-v1') or pass an env creator")
        for name in ("num_env_runners",):
            if not isinstance(s[name], int) or s[name] < 0:
                raise ValueError(f"{name} must be an integer >= 0, not {s[name]!r}")
        for name in ("num_envs_per_env_runner", "metrics_num_episodes_for_smoothing"):
            if not isinstance(s[name], int) or s[name] < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {s[name]!r}")
        frag = s["rollout_fragment_length"]
        if frag != "auto" and (not isinstance(frag, int) or frag < 1):
            raise ValueError(f"rollout_fragment_length must be 'auto' or an integer >= 1, not {frag!r}")
        if s["observation_filter"] not in FILTERS:
            raise ValueError(f"observation_filter must be one of {FILTERS}, not {s['observation_filter']!r}")
        if not isinstance(s["model"], dict):
            raise TypeError(f"model must be a dict such as {{'fcnet_hiddens': [64, 64]}}, not {s['model']!r}")

    def build(self) -> "Algorithm":
        if self.algo_class is None:
            raise TypeError("use a concrete config such as PPOConfig or ESConfig")
        return self.algo_class(self.copy())

    build_algo = build  # Ray 2.40's name


class Algorithm:
    """One learner in the driver plus rollout workers; `train()` is one iteration."""

    config_class = AlgorithmConfig

    def __init__(self, config: AlgorithmConfig | dict | None = None):
        if config is None or isinstance(config, dict):
            config = self.config_class().update_from_dict(config or {})
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"not {type(config).__name__}")
        config.validate()
        self.config = config
        self.seed = config.seed if config.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
        probe = make_env(config.env, config.env_config, 0, 0)
        try:
            self.policy_spec = PolicySpec.from_spaces(probe.observation_space, probe.action_space, config.model)
        finally:
            probe.close()
        self.policy = Policy(self.policy_spec, seed=self.seed)
        self.iteration = 0
        self.time_total_s = 0.0
        self.num_env_steps_sampled = 0
        self._episode_returns: deque = deque(maxlen=config.metrics_num_episodes_for_smoothing)
        self._episode_lengths: deque = deque(maxlen=config.metrics_num_episodes_for_smoothing)
        self.setup()

    # ---- for subclasses ------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Start workers and optimisers."""

    def training_step(self) -> dict:
        raise NotImplementedError

    def extra_state(self) -> dict:
        """What a subclass adds to a checkpoint (optimiser state, ...)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def stop(self) -> None:
        """Stop the workers."""

    # ---- the loop ------------------------------------------------------------------------------------------

    def record_episodes(self, returns, lengths) -> None:
        self._episode_returns.extend(float(r) for r in returns)
        self._episode_lengths.extend(int(n) for n in lengths)

    def train(self) -> dict:
        t0 = time.perf_counter()
        result = self.training_step()
        self.iteration += 1
        elapsed = time.perf_counter() - t0
        self.time_total_s += elapsed
        mean = lambda xs: float(np.mean(xs)) if xs else math.nan  # noqa: E731
        runners = {
            "episode_return_mean": mean(self._episode_returns),
            "episode_return_max": max(self._episode_returns, default=math.nan),
            "episode_return_min": min(self._episode_returns, default=math.nan),
            "episode_len_mean": mean(self._episode_lengths),
            **result.pop("env_runners", {}),
        }
        return {
            "training_iteration": self.iteration,
            "episode_return_mean": runners["episode_return_mean"],
            "num_env_steps_sampled_lifetime": self.num_env_steps_sampled,
            "time_this_iter_s": elapsed,
            "time_total_s": self.time_total_s,
            "env_runners": runners,
            **result,
        }

    # ---- using the policy ----------------------------------------------------------------------------------

    def get_policy(self) -> Policy:
        return self.policy

    def get_weights(self) -> np.ndarray:
        return self.policy.get_weights()

    def set_weights(self, weights: np.ndarray) -> None:
        self.policy.set_weights(np.array(weights, dtype=np.float64))

    def compute_single_action(self, observation, *, explore: bool = False):
        """The policy's action for one observation (the most likely one unless `explore`)."""
        return self.policy.compute_single_action(observation, explore=explore)

    def evaluate(self, num_episodes: int = 5, *, seed: int = 10_000) -> dict:
        """Mean return of the greedy policy over `num_episodes` in the driver (no exploration)."""
        env = make_env(self.config.env, self.config.env_config, 0, 0)
        returns = []
        try:
            for k in range(num_episodes):
                obs, _ = env.reset(seed=seed + k)
                total, done = 0.0, False
                while not done:
                    obs, r, terminated, truncated, _ = env.step(self.compute_single_action(obs))
                    total += float(r)
                    done = terminated or truncated
                returns.append(total)
        finally:
            env.close()
        return {"evaluation_return_mean": float(np.mean(returns)), "evaluation_returns": returns}

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def save(self, checkpoint_dir: str | None = None) -> str:
        """Write the algorithm's state (config, weights, optimiser, counters) and the policy alone
        (`policy.npz`, for serving) to a directory; returns its path."""
        import cloudpickle  # the config may hold an env creator defined in __main__
        directory = os.fspath(checkpoint_dir) if checkpoint_dir else tempfile.mkdtemp(prefix="rl-checkpoint-")
        os.makedirs(directory, exist_ok=True)
        state = {
            "algorithm": type(self).__name__, "config": self.config.to_dict(), "seed": self.seed,
            "weights": self.policy.get_weights(), "iteration": self.iteration, "time_total_s": self.time_total_s,
            "num_env_steps_sampled": self.num_env_steps_sampled,
            "episode_returns": list(self._episode_returns), "episode_lengths": list(self._episode_lengths),
            "extra": self.extra_state(),
        }
        tmp = os.path.join(directory, STATE_FILE + ".tmp")
        with open(tmp, "wb") as f:
            cloudpickle.dump(state, f)
        os.replace(tmp, os.path.join(directory, STATE_FILE))  # a reader never sees half a checkpoint
        self.policy.save(directory)
        return directory

    def restore(self, checkpoint) -> None:
        """Load a directory written by `save()` (or a Checkpoint object with `.path`) into this algorithm."""
        state = _read_state(checkpoint)
        if state["algorithm"] != type(self).__name__:
            raise ValueError(f"this checkpoint is of {state['algorithm']}, not {type(self).__name__}")
        self.set_weights(state["weights"])
        self.iteration = state["iteration"]
        self.time_total_s = state["time_total_s"]
        self.num_env_steps_sampled = state["num_env_steps_sampled"]
        self._episode_returns.clear()
        self._episode_lengths.clear()
        self.record_episodes(state["episode_returns"], state["episode_lengths"])
        self.load_extra_state(state["extra"])

    @classmethod
    def from_checkpoint(cls, checkpoint) -> "Algorithm":
        """A new algorithm with the checkpoint's config and state."""
        state = _read_state(checkpoint)
        if cls is Algorithm:  # Algorithm.from_checkpoint(path): the class the checkpoint names
            known = {sub.__name__: sub for sub in Algorithm.__subclasses__()}
            if state["algorithm"] not in known:
                raise ValueError(f"unknown algorithm {state['algorithm']!r} in this checkpoint")
            cls = known[state["algorithm"]]
        algo = cls(cls.config_class().update_from_dict(state["config"]))
        algo.restore(checkpoint)
        return algo

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _read_state(checkpoint) -> dict:
    import cloudpickle
    directory = os.fspath(getattr(checkpoint, "path", checkpoint))
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {STATE_FILE} in {directory!r}: pass a directory written by Algorithm.save()")
    with open(path, "rb") as f:
        return cloudpickle.load(f)
